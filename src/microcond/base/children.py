"""Child processes that die with the process that started them.

A training rank, or a ``pipe:`` command streaming shards (``gsutil cat``, ``curl``, a user's shell
pipeline), must not outlive its reader: an orphan keeps a run's lock, a GPU, or retries a
download for minutes under pid 1. Two guards, for the two ways a reader ends:

* killed outright (SIGKILL, a crash): the kernel sends the child SIGKILL (``PR_SET_PDEATHSIG``,
  Linux), set in the child before it runs its command;
* stopping in order (an exception, SIGTERM turned into an exit, the end of the data): the reader
  kills the child's whole process group, the grandchildren of a shell pipeline included.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import weakref
from typing import Sequence

# Exit statuses of a pipe command that a reader which stopped early causes: SIGPIPE as a status
# (141) or as a signal, and the SIGTERM with which :meth:`ChildPipe.close` stops it.
EARLY_STOP = {141, -signal.SIGPIPE, -signal.SIGTERM}


def die_with_parent() -> None:
    """In the child before exec: SIGKILL when the launching thread dies (Linux prctl)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_open: "weakref.WeakSet[ChildPipe]" = weakref.WeakSet()


class ChildPipe:
    """The standard output of ``command`` (a shell line, or an argv list), read like a file; the
    command runs in a process group of its own that dies with this process (module doc)."""

    def __init__(self, command: str | Sequence[str]) -> None:
        self.command = command
        self.proc = subprocess.Popen(command, shell=isinstance(command, str), stdout=subprocess.PIPE,
                                     start_new_session=True, preexec_fn=die_with_parent)
        _open.add(self)

    def read(self, size: int = -1) -> bytes:
        return self.proc.stdout.read(size)

    def kill_group(self) -> None:
        """SIGTERM to the command's whole process group, if any of it still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def close(self, grace: float = 0.0) -> None:
        """Stop reading. A command still running after ``grace`` seconds (with its output closed
        it ends soon, SIGPIPE at the latest) is stopped with its group and its status ignored;
        a command that failed on its own (a missing file, a download that gave up) raises OSError."""
        if self.proc.stdout.closed:
            return
        self.proc.stdout.close()
        try:
            code = self.proc.wait(timeout=grace) if grace else self.proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            self.kill_group()
            self.proc.wait()
            code = 0
        _open.discard(self)
        if code != 0 and code not in EARLY_STOP:
            raise OSError(f"command {self._shown()!r} exited with status {code}")

    def _shown(self) -> str:
        return self.command if isinstance(self.command, str) else " ".join(self.command)

    def __enter__(self) -> "ChildPipe":
        return self

    def __exit__(self, *exc: object) -> None:
        # Already failing (the reader found no tar, say): a command that failed on its own is the
        # cause worth reporting, so it gets a moment to end by itself.
        self.close(grace=2.0 if exc[0] is not None else 0.0)


@atexit.register
def _stop_children() -> None:
    for pipe in list(_open):
        pipe.kill_group()
