"""Training throughput, loop efficiency, the embedding's share, and the allocator setting.

Prints one JSON line per result. Each figure comes with its baseline from the same run:
- `train_images_per_s`: the full loop (`microcond.train.loop.train`: data from the pixel cache,
  conditions, EMA, logging) for `tiny` at 32 px (batch 32) and `small` at 64 px;
- `loop_efficiency`: a bare forward+backward+AdamW step of the same model on one fixed batch,
  divided by the full loop's time per step (target >= 0.9);
- `embedding_share`: the micro-condition embedding's time / the full step's time (target < 1%);
- `runtime_env`: the full loop in a child process with none of `runtime.RUNTIME_ENV`, with glibc's
  allocator settings only, and with those plus OMP_WAIT_POLICY=PASSIVE (what `microcond train`
  sets for itself);
- `layout` (`--layouts`): `microcond train` on the tiny preset as users run it, for 1 thread,
  2 threads, 2 processes x 1 thread and the default layout (`runtime.plan_layout` on the free
  cores), each on the idle machine and beside one busy process (a spinning Python loop); the
  1-thread idle run is the baseline of every ratio; peak RSS is that of the run's largest
  process (the kernel's figure for waited-for descendants).

    python benchmarks/bench_train.py [--steps 60] [--presets tiny small] [--skip-allocator]
    python benchmarks/bench_train.py --layouts [--steps 150] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import peak_rss_mib
from PIL import Image


def emit(**row) -> None:
    row.update(threads=torch.get_num_threads(), device="cpu", peak_rss_mib=round(peak_rss_mib(), 1))
    print(json.dumps(row), flush=True)


def make_images(folder: Path, n: int = 256) -> Path:
    """Photo-like images of mixed sizes and formats (cached to the pixel cache before timing)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = int(rng.integers(24, 200)), int(rng.integers(24, 200))
        yy, xx = np.mgrid[:h, :w] / max(h, w)
        base = rng.uniform(0, 255, 3)
        img = base + 60 * np.sin(6 * xx[..., None] + rng.uniform(0, 6, 3)) * np.cos(5 * yy[..., None])
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.{'png' if i % 2 else 'jpg'}")
    return folder


def full_loop(preset: str, data: Path, steps: int, out: Path) -> float:
    """Median images/s of the full training loop over logging windows after warm-up."""
    from microcond.train import config as config_mod
    from microcond.train.loop import train

    res = 32 if preset == "tiny" else 64
    cfg = config_mod.resolve(preset, overrides=dict(data=str(data), resolution=res, batch_size=32, steps=steps, log_every=10, checkpoint_every=10**6, sample_every=0))
    train(cfg, out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in rows[1:])  # first window includes warm-up


def bare_step(preset: str, steps: int) -> tuple[float, float]:
    """(images/s of a bare fwd+bwd+AdamW step, seconds of the embedding per step)."""
    from microcond.cond.embedder import MicroCond, time_ids
    from microcond.model import build_denoiser
    from microcond.train import config as config_mod
    from microcond.train.launch import choose_precision

    res = 32 if preset == "tiny" else 64
    cfg = config_mod.resolve(preset, overrides=dict(resolution=res, batch_size=32))
    torch.manual_seed(0)
    model = build_denoiser(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(32, 3, res, res)
    t = torch.randint(0, 1000, (32,))
    ids = time_ids([MicroCond((64 + i, 96), (i, 0), (res, res)) for i in range(32)])
    dtype = choose_precision(cfg.precision, torch.device("cpu"))
    times, emb_times = [], []
    for i in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.mse_loss(model(x, t, ids).float(), x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            model.embedder(ids)
        emb_times.append(time.perf_counter() - start)
    warm = steps // 5
    return 32 / statistics.median(times[warm:]), statistics.median(emb_times[warm:])


LAYOUTS = {  # name -> (extra flags, extra environment)
    "1_thread": (["--procs", "1"], {"OMP_NUM_THREADS": "1"}),
    "2_threads": (["--procs", "1"], {"OMP_NUM_THREADS": "2"}),
    "2_procs_x_1_thread": (["--procs", "2"], {}),
    "default": ([], {}),
}


def layout_run(data: Path, out: Path, steps: int, flags: list[str], extra: dict[str, str]) -> tuple[float, float, str]:
    """(images/s as the median of the logging windows after the first, peak RSS MiB of the largest
    process, the layout line) of one `microcond train` run."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | extra
    cmd = [sys.executable, "-m", "microcond.cli.main", "train", "--preset", "tiny", "--data", str(data), "--out", str(out),
           "--steps", str(steps), "--log-every", str(max(steps // 6, 1)), "--sample-every", "0", "--no-progress", *flags]
    wrapped = [sys.executable, "-c", "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)", *cmd]
    done = subprocess.run(wrapped, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    line = next((l for l in done.stderr.splitlines() if "data-parallel processes" in l), "1 process")
    return statistics.median(r["images_per_s"] for r in rows[1:]), int(done.stderr.split()[-1]) / 1024, line


def layouts(steps: int, repeats: int, tmp: Path) -> None:
    from microcond.demodata.build import DemoDataConfig, build_demo_data

    data = tmp / "demo"
    build_demo_data(DemoDataConfig(out=str(data), n_train=1200, n_eval=16), progress=False)
    layout_run(data / "train", tmp / "warm", 20, ["--procs", "1"], {"OMP_NUM_THREADS": "1"})  # scan and pixel cache, once
    results: dict[tuple[str, bool], float] = {}
    for busy in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for name, (flags, extra) in LAYOUTS.items():
                runs = [layout_run(data / "train", tmp / name, steps, flags, extra) for _ in range(repeats)]
                speed = statistics.median(r[0] for r in runs)
                results[name, busy] = speed
                base = results["1_thread", False]
                emit(result="layout", layout=name, beside_busy_process=busy, images_per_s=round(speed, 1),
                     vs_1_thread_idle=round(speed / base, 2), runs=[round(r[0], 1) for r in runs],
                     peak_rss_mib_largest_process=round(max(r[1] for r in runs), 1), chosen=runs[0][2])
        finally:
            if spinner is not None:
                spinner.kill()
    emit(result="layout_goals", default_idle_vs_1_thread=round(results["default", False] / results["1_thread", False], 2),
         goal_idle=">= 1.6", default_busy_slowdown_vs_idle=round(results["default", False] / results["default", True], 2),
         default_busy_vs_1_thread_busy=round(results["default", True] / results["1_thread", True], 2), goal_busy="slowdown <= 1.3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--skip-allocator", action="store_true")
    parser.add_argument("--layouts", action="store_true", help="only the process/thread layout comparison")
    parser.add_argument("--repeats", type=int, default=3, help="--layouts: runs per layout (the median is reported)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("MICROCOND_CACHE", str(tmp / "cache"))
        if args.layouts:
            layouts(args.steps, args.repeats, tmp)
            return
        data = make_images(tmp / "images")
        if args.child:  # one full-loop measurement for the allocator comparison
            emit(result="allocator_child", preset=args.child, images_per_s=round(full_loop(args.child, data, args.steps, tmp / "run"), 1))
            return
        for preset in args.presets:
            full = full_loop(preset, data, args.steps, tmp / f"run-{preset}")
            bare, emb_s = bare_step(preset, max(args.steps // 2, 10))
            emit(result="train_images_per_s", preset=preset, images_per_s=round(full, 1), baseline_bare_step_images_per_s=round(bare, 1))
            emit(result="loop_efficiency", preset=preset, value=round(full / bare, 3), target=">= 0.9")
            emit(result="embedding_share", preset=preset, value=round(emb_s / (32 / full), 5), embedding_ms=round(emb_s * 1e3, 3), target="< 0.01")
        if not args.skip_allocator:
            from microcond.train.launch import RUNTIME_ENV

            allocator = {k: v for k, v in RUNTIME_ENV.items() if k.startswith("MALLOC_")}
            for setting, extra in (("none", {}), ("allocator", allocator), ("allocator+omp_passive", RUNTIME_ENV)):
                env = {k: v for k, v in os.environ.items() if k not in RUNTIME_ENV}
                env.update(extra, MICROCOND_NO_REEXEC="1")
                out = subprocess.run([sys.executable, __file__, "--child", "tiny", "--steps", str(args.steps)], env=env, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                emit(result="runtime_env", setting=setting, preset="tiny", images_per_s=row["images_per_s"], child_peak_rss_mib=row["peak_rss_mib"])


if __name__ == "__main__":
    main()
