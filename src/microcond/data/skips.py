"""What the two loaders (indexed and streamed) share around their DataLoader workers: samples
left out (counted, summarised, bounded in memory and in print), a worker's error as one line,
and the check of the worker count.

A loader that meets a bad sample skips it and goes on; a stream that meets the same bad sample
every epoch, or a data set that is bad throughout, must neither fill the terminal nor grow a list
for ever. :class:`Skips` keeps the count, the count per reason and the first :attr:`keep`
examples, prints the first :attr:`echo` lines and says once that the rest are only counted.

Loader workers run in other processes, so each batch carries the skips met since the previous
batch (:meth:`Skips.drain`, a small JSON text) and the main process merges them
(:meth:`Skips.merge`): ``data.json`` and the end-of-run line count every skip of every worker.
"""

from __future__ import annotations

import collections
import json
import re
import sys
from typing import Any, Iterator

KEEP = 200  # examples kept for data.json
ECHO = 10  # lines printed before the rest are only counted


def reason_kind(reason: str) -> str:
    """The reason without the numbers that tell one sample from another, for counting by kind:
    "decoded size (30, 40) differs from ..." and "decoded size (31, 40) ..." are one kind."""
    return re.sub(r"\d+", "N", reason)[:120]


class Skips:
    """Count, kinds and first examples of skipped samples; ``label`` starts each printed line."""

    def __init__(self, label: str, keep: int = KEEP, echo: int = ECHO, quiet: bool = False) -> None:
        self.label, self.keep, self.echo, self.quiet = label, keep, echo, quiet
        self.count = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        self.examples: list[tuple[str, str]] = []
        self._new: list[tuple[str, str]] = []  # since the last drain (bounded like examples)
        self._new_count = 0
        self._new_kinds: collections.Counter[str] = collections.Counter()

    def add(self, name: str, reason: str) -> None:
        """One sample left out, with its reason."""
        self.count += 1
        self._new_count += 1
        kind = reason_kind(reason)
        self.kinds[kind] += 1
        self._new_kinds[kind] += 1
        if len(self.examples) < self.keep:
            self.examples.append((name, reason))
        if len(self._new) < self.keep:
            self._new.append((name, reason))
        if self.quiet:
            return
        if self.count <= self.echo:
            print(f"{self.label}: skipped {name}: {reason}", file=sys.stderr)
        elif self.count == self.echo + 1:
            print(f"{self.label}: more skips are counted, not printed (data.json lists the first {self.keep})", file=sys.stderr)

    def drain(self) -> str:
        """The skips met since the last drain, as JSON text for a batch to carry ("" when none)."""
        if not self._new_count:
            return ""
        text = json.dumps({"count": self._new_count, "kinds": dict(self._new_kinds), "examples": self._new})
        self._new, self._new_count, self._new_kinds = [], 0, collections.Counter()
        return text

    def merge(self, text: str) -> None:
        """Add what another process's :meth:`drain` returned (nothing printed: it printed them)."""
        if not text:
            return
        new = json.loads(text)
        self.count += int(new["count"])
        self.kinds.update(new["kinds"])
        room = self.keep - len(self.examples)
        self.examples += [tuple(e) for e in new["examples"][:max(room, 0)]]

    def first(self, n: int = 3) -> str:
        """The first ``n`` examples as one line: "name: reason; name: reason"."""
        return "; ".join(f"{name}: {reason}" for name, reason in self.examples[:n])

    def summary(self) -> dict[str, Any]:
        """For data.json: the count, the count per kind (most common first) and the first examples."""
        return {"count": self.count, "kinds": dict(self.kinds.most_common()), "examples": [list(e) for e in self.examples]}


def check_num_workers(num_workers: int) -> None:
    """The loaders' DataLoader worker count: a non-negative integer (0 loads in the main process)."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")


def worker_errors(batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``batches`` with a loader worker's error raised as its own one-line message.

    torch re-raises a worker's exception with the worker's whole traceback as its message; a bad
    shard deserves the line that says what is wrong with it.
    """
    try:
        yield from batches
    except (ValueError, OSError) as err:
        text = str(err)
        if "Original Traceback" not in text:
            raise
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        raise ValueError(last.split(": ", 1)[1] if ": " in last else last) from None
