"""Helpers shared by the benchmarks (run as scripts: `python benchmarks/bench_<thing>.py`)."""

from __future__ import annotations

import resource
import statistics
import time
from typing import Callable


def timed(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call, by ``clock`` (wall time; pass
    ``time.process_time`` for this process's CPU time)."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB.

    Linux's VmHWM belongs to this program's own address space; ``ru_maxrss`` also keeps the
    peak of the parent a child was forked from, across exec.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
