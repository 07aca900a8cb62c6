"""Build time of the demo data set: one worker (the baseline) against ``--jobs`` workers.

Builds the set into a temporary folder after one small warm-up build, ``--repeats`` times per
worker count, and prints one JSON line per worker count with the median wall time, images/s and
the peak RSS of this process and of the largest worker. Default (3,000 + 500 images, 3 repeats)
runs in about a minute on 2 idle cores; ``--full`` builds the default 6,000 + 1,000.

    .venv/bin/python benchmarks/bench_demodata.py
    .venv/bin/python benchmarks/bench_demodata.py --full --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

from microcond.demodata.build import DemoDataConfig, build_demo_data


def build_seconds(root: Path, n_train: int, n_eval: int, jobs: int) -> float:
    start = time.perf_counter()
    build_demo_data(DemoDataConfig(out=str(root), n_train=n_train, n_eval=n_eval, jobs=jobs), progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--full", action="store_true", help="the default data set: 6000 + 1000 images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    n_train, n_eval = (6000, 1000) if args.full else (args.n_train, args.n_eval)
    with tempfile.TemporaryDirectory() as tmp:
        build_seconds(Path(tmp) / "warm", 40, 10, 1)  # warm-up: imports, font, page cache
        baseline = None
        for jobs in sorted({1, args.jobs}):
            times = [build_seconds(Path(tmp) / f"j{jobs}", n_train, n_eval, jobs) for _ in range(args.repeats)]
            median = statistics.median(times)
            baseline = baseline or median
            print(json.dumps({
                "bench": "demo-data build", "images": n_train + n_eval, "jobs": jobs,
                "median_s": round(median, 2), "images_per_s": round((n_train + n_eval) / median, 1),
                "speedup_vs_1_job": round(baseline / median, 2), "runs_s": [round(t, 2) for t in times],
                "peak_rss_mib_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "peak_rss_mib_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            }), flush=True)


if __name__ == "__main__":
    main()
