"""Subcommands of the ``microcond`` command, by kind: each module has one ``add_<name>`` function
that declares a command's flags and one ``run_<name>`` function that calls its stage. Stages are
imported inside ``run_*`` so that torch-free commands (``scan``, ``report``) start without torch."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import typing

EPILOG_INDENT = "  "


def example_lines(*lines: str) -> str:
    return "examples:\n" + "\n".join(EPILOG_INDENT + line for line in lines)


def subparser(sub: argparse._SubParsersAction, name: str, help: str, examples: list[str]) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=example_lines(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line ("microcond sample: error: ..."), exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def integer(lo: int, hi: int, what: str = "an integer") -> typing.Callable[[str], int]:
    """An argparse type: an integer in [lo, hi], else one line saying so."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {what} from {lo} to {hi}, got {text!r}")
        return value

    convert.__name__ = what
    return convert


def number(lo: float, hi: float, what: str = "a number") -> typing.Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi] (NaN and infinity refused), else one line."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and lo <= value <= hi):
            raise argparse.ArgumentTypeError(f"expected {what} from {lo:g} to {hi:g}, got {text!r}")
        return value

    convert.__name__ = what
    return convert


# The ranges of the commands' numeric flags. Sizes as image headers allow (data.headers.MAX_SIDE);
# counts within int32; seeds within what torch.Generator.manual_seed takes.
MAX_COUNT = 2**31 - 1
SIZE = integer(1, 1 << 20, "a size in px")
OFFSET = integer(0, 1 << 20, "a crop offset in px")
COUNT = integer(1, MAX_COUNT, "a positive integer")
SEED = integer(0, 2**63 - 1, "a seed")
SCALE = number(0.0, 1000.0, "a guidance scale")


class Terminated(BaseException):
    """SIGTERM received: raised where the command stands, so that ``with`` blocks and ``finally``
    clauses run (the run lock, pipe commands, data-parallel ranks)."""


_COMMAND_PID = 0  # the process whose SIGTERM unwinds (unwind_on_sigterm)


def _terminated(signum: int, frame: object) -> None:
    if os.getpid() != _COMMAND_PID:  # a forked worker (a decoding pool, a DataLoader's): die as by default,
        signal.signal(signum, signal.SIG_DFL)  # never unwind inside multiprocessing's locks
        os.kill(os.getpid(), signum)
        return
    raise Terminated(signal.Signals(signum).name)


def _default_in_child() -> None:
    """A forked process dies of SIGTERM in the kernel, not in a Python handler: a handler runs only
    between bytecodes, and a SIGTERM that lands just before a pool's worker blocks on its queue's
    lock would never run (Pool.terminate then waits on that worker for ever)."""
    if _COMMAND_PID and signal.getsignal(signal.SIGTERM) is _terminated:
        with contextlib.suppress(ValueError):  # a fork from a thread that is not the main one
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def unwind_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated` in this process (processes forked later die of it)."""
    global _COMMAND_PID
    if not _COMMAND_PID:
        os.register_at_fork(after_in_child=_default_in_child)
    _COMMAND_PID = os.getpid()
    signal.signal(signal.SIGTERM, _terminated)
