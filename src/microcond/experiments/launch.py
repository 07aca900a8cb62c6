"""Train several tiny models side by side on the demo data: the data sets, their caches, and the
training processes (one thread each), as the demo and the paper experiment use them.

Two 1-thread processes outrun one 2-thread one on a 2-core machine (reference/cpu-measurements.md),
and every stage is reused when done, so a second call only redoes what is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from microcond.metrics.cropeffect import TRAIN_SIZE

# Demo data mixes by name: DemoDataConfig fields (microcond.demodata.build.ASPECT_MIXES).
DATA_MIXES = {
    "web": dict(aspect_mix="web"),
    "extreme": dict(aspect_mix="extreme"),
    "wide": dict(aspect_mix="wide"),
    "wide-sq10": dict(aspect_mix="wide", square_share=0.10),
    "wide-e12": dict(aspect_mix="wide", emoji_per_class=12),
}

def ensure_demo_data(folder: Path, mix: str, n_train: int = 6000, n_eval: int = 1000, progress: bool = True, emoji_per_class: int = 0) -> Path:
    """Build the demo data set of aspect ``mix`` (a :data:`DATA_MIXES` key) into ``folder`` unless
    a finished build of the same kind is there."""
    from microcond.demodata.build import DemoDataConfig, build_demo_data, describe

    meta = folder / "demo-data.json"
    built = json.loads(meta.read_text()) if meta.is_file() else {}
    wanted = {"n_train": n_train, "n_eval": n_eval, "emoji_per_class": emoji_per_class, **DATA_MIXES[mix]}
    defaults = asdict(DemoDataConfig(out=""))
    if built and built.get("status") != "building" and {k: built.get("config", {}).get(k, defaults[k]) for k in wanted} == wanted:
        return folder
    cfg = DemoDataConfig(out=str(folder), **wanted)
    print(describe(build_demo_data(cfg, progress=progress)), file=sys.stderr)
    return folder


def prepare_caches(data: Path, min_edges: set[int]) -> None:
    """Scan and fill the pixel caches once, before parallel runs would race to build them."""
    from microcond.data.buckets import parse_buckets
    from microcond.data.loader import open_source
    from microcond.data.pixelcache import PixelCache
    from microcond.data.source import default_cache_dir

    for edge in sorted(min_edges):
        source = open_source(data, min_original_edge=edge)
        PixelCache.build(source, parse_buckets(f"square:{TRAIN_SIZE}"), default_cache_dir())


def _steps_done(run: Path) -> int:
    rows = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    return json.loads(rows[-1])["step"] if rows else 0


def train_runs(commands: dict[str, list[str]], runs: dict[str, Path], steps: dict[str, int], parallel: int = 2, progress: bool = True,
               one_thread: bool = True) -> None:
    """Run training commands ``parallel`` at a time with one thread each; one overall progress bar.

    Args:
        steps: run name -> its training steps.
        one_thread: False lets each command lay itself out over the free cores (``microcond
            train``'s data-parallel processes): for a single run.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if one_thread else dict(os.environ)
    pending = [n for n in commands if _steps_done(runs[n]) < steps[n]]
    running: dict[str, subprocess.Popen] = {}
    logs = {}
    bar = tqdm(total=sum(steps.values()), desc="train models", unit="step", dynamic_ncols=True, disable=not progress)
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            runs[name].mkdir(parents=True, exist_ok=True)
            logs[name] = open(runs[name] / "train.log", "a")
            cmd = [sys.executable, "-m", "microcond.cli", *commands[name][1:], "--no-progress"]
            running[name] = subprocess.Popen(cmd, env=env, stdout=logs[name], stderr=subprocess.STDOUT)
        time.sleep(2)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                logs[name].close()
                del running[name]
                if proc.returncode != 0:
                    for other in running.values():
                        other.terminate()
                    lines = [line for line in (runs[name] / "train.log").read_text(errors="replace").splitlines() if line.strip()]
                    raise RuntimeError(f"training {name} failed (exit {proc.returncode}): {lines[-1].strip() if lines else 'no output'}; "
                                       f"see {runs[name] / 'train.log'}")
        bar.n = sum(min(_steps_done(runs[n]), steps[n]) for n in commands)
        bar.refresh()
    bar.close()
