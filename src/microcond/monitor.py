"""What a run shows while it trains: metrics.jsonl rows, the loss curve, periodic sample grids."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from microcond.checkpoint import atomic_write_text
from microcond.config import TrainConfig
from microcond.model import Denoiser, build_denoiser
from microcond.runtime import choose_precision


def keep_metrics_through(path: Path, step: int) -> None:
    """Keep the rows of metrics.jsonl up to ``step``, the checkpoint a run resumes from.

    The resumed run logs the later steps again; a line cut short by a kill goes too.
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    if kept != lines:
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def metrics_line(row: dict) -> str:
    """One line of metrics.jsonl: strict JSON, a non-finite number written as null."""
    return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}, allow_nan=False)


def plot_loss(metrics_path: Path, out: Path) -> None:
    """Loss against images seen, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] if metrics_path.exists() else []
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["images_seen"] for r in rows], [math.nan if r["loss"] is None else r["loss"] for r in rows], lw=1)
    ax.set_xlabel("images seen")
    ax.set_ylabel("training loss (MSE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title(f"{metrics_path.parent.name}: loss at step {rows[-1]['step']}")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)


def write_sample_grid(model: Denoiser, ema: dict, scheduler: DDPMScheduler, cfg: TrainConfig, path: Path, device: torch.device, stage=None) -> None:
    """16 samples from the EMA weights with SDXL's default inference conditions, one class per column.

    With a VAE the samples are latents decoded by it; with text all share one training caption.
    """
    from microcond.grid import save_grid
    from microcond.record import MicroCond
    from microcond.run import denoise_fn
    from microcond.sample import make_cond, sample

    shadow = build_denoiser(cfg).to(device)
    shadow.load_state_dict({**model.state_dict(), **{k: v.to(model.state_dict()[k].dtype) for k, v in ema.items()}})
    shadow.eval()
    n = 16
    size = (cfg.resolution, cfg.resolution)
    text = stage.grid_text() if stage is not None else None  # one caption for all: label 0 of the table
    labels = [i % cfg.num_classes for i in range(n)] if cfg.num_classes else [0 if text is not None else -1] * n
    cond = make_cond(MicroCond(size, (0, 0), size), labels, n=n)
    latents = stage is not None and stage.latent_space is not None
    shape = stage.latent_space.latent_shape(size) if latents else (3, *size)
    if text is not None:
        text = tuple(torch.cat([part, torch.zeros_like(part)]) for part in text)  # + the null entry
    denoise = denoise_fn(shadow, choose_precision(cfg.precision, device), text=text)
    images = sample(denoise, cond, shape=shape, seeds=range(n), steps=25, scheduler_config=dict(scheduler.config), clamp=not latents, device=device, progress=False)
    if latents:
        images = torch.cat([stage.latent_space.decode(images[k:k + 4].to(device)).cpu() for k in range(0, n, 4)])  # (n, 3, H, W)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, path, nrow=8)
