"""Training throughput, loop efficiency, the embedding's share, and the allocator setting.

Prints one JSON line per result. Each figure comes with its baseline from the same run:
- `train_images_per_s`: the full loop (`microcond.train.train`: data from the pixel cache,
  conditions, EMA, logging) for `tiny` at 32 px (batch 32) and `small` at 64 px;
- `loop_efficiency`: a bare forward+backward+AdamW step of the same model on one fixed batch,
  divided by the full loop's time per step (target >= 0.9);
- `embedding_share`: the micro-condition embedding's time / the full step's time (target < 1%);
- `runtime_env`: the full loop in a child process with none of `runtime.RUNTIME_ENV`, with glibc's
  allocator settings only, and with those plus OMP_WAIT_POLICY=PASSIVE (what `microcond train`
  sets for itself).

    python benchmarks/bench_train.py [--steps 60] [--presets tiny small] [--skip-allocator]
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
    from microcond import config as config_mod
    from microcond.train import train

    res = 32 if preset == "tiny" else 64
    cfg = config_mod.resolve(preset, overrides=dict(data=str(data), resolution=res, batch_size=32, steps=steps, log_every=10, checkpoint_every=10**6, sample_every=0))
    train(cfg, out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in rows[1:])  # first window includes warm-up


def bare_step(preset: str, steps: int) -> tuple[float, float]:
    """(images/s of a bare fwd+bwd+AdamW step, seconds of the embedding per step)."""
    from microcond import config as config_mod
    from microcond.conditions import MicroCond, time_ids
    from microcond.model import build_denoiser
    from microcond.runtime import choose_precision

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--skip-allocator", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("MICROCOND_CACHE", str(tmp / "cache"))
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
            from microcond.runtime import RUNTIME_ENV

            allocator = {k: v for k, v in RUNTIME_ENV.items() if k.startswith("MALLOC_")}
            for setting, extra in (("none", {}), ("allocator", allocator), ("allocator+omp_passive", RUNTIME_ENV)):
                env = {k: v for k, v in os.environ.items() if k not in RUNTIME_ENV}
                env.update(extra, MICROCOND_NO_REEXEC="1")
                out = subprocess.run([sys.executable, __file__, "--child", "tiny", "--steps", str(args.steps)], env=env, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                emit(result="runtime_env", setting=setting, preset="tiny", images_per_s=row["images_per_s"], child_peak_rss_mib=row["peak_rss_mib"])


if __name__ == "__main__":
    main()
