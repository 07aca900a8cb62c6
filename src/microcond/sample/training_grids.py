"""Sample grids written while a run trains: 16 samples from the EMA weights every
``sample_every`` steps, with SDXL's default inference conditions, one class per column.

The EMA weights are swapped into the training model itself for the grid, and the trained
weights swapped back bitwise from a host-memory copy: no second model on the device, no rebuild,
no second read of pretrained weights (for SDXL a copy would cost 10 GB of GPU memory).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator
from typing import Any

import torch
from diffusers import DDPMScheduler

from microcond.cond.record import MicroCond
from microcond.model import Denoiser
from microcond.sample.grid import save_grid
from microcond.sample.run import denoise_fn, with_ema
from microcond.sample.samplers import make_cond, sample
from microcond.train.config import TrainConfig
from microcond.train.launch import choose_precision

GRID_SAMPLES = 16
GRID_STEPS = 25  # DDIM


@contextlib.contextmanager
def ema_swapped(model: Denoiser, ema: dict[str, torch.Tensor]) -> Iterator[Denoiser]:
    """``model`` in eval mode holding its EMA weights for the block; its own weights (kept on the
    host meanwhile) and mode come back exactly after it, also on an error."""
    state = model.state_dict()  # tensors sharing the parameters' storage
    held = {k: state[k].detach().to("cpu", copy=True) for k in ema}
    training = model.training
    try:
        with torch.no_grad():
            for k, v in with_ema({k: state[k] for k in ema}, ema).items():
                state[k].copy_(v)
        yield model.eval()
    finally:
        with torch.no_grad():
            for k, v in held.items():
                state[k].copy_(v)
        model.train(training)


class TrainingGrids:
    """The loop's ``sample_grid`` (:func:`microcond.train.loop.train`): one grid PNG per call."""

    def __call__(self, *, model: Denoiser, ema: dict[str, torch.Tensor], scheduler: DDPMScheduler, cfg: TrainConfig, path: Path,
                 device: torch.device, stage: Any = None) -> None:
        """With a VAE the samples are latents decoded by it; with text all share one training caption."""
        n, size = GRID_SAMPLES, (cfg.resolution, cfg.resolution)
        grid_text = getattr(stage, "grid_text", None)
        text = grid_text() if grid_text is not None else None  # one caption for all: label 0 of the table
        labels = [i % cfg.num_classes for i in range(n)] if cfg.num_classes else [0 if text is not None else -1] * n
        cond = make_cond(MicroCond(size, (0, 0), size), labels, n=n)
        latent_space = getattr(stage, "latent_space", None)
        shape = latent_space.latent_shape(size) if latent_space is not None else (3, *size)
        if text is not None:
            text = tuple(torch.cat([part, torch.zeros_like(part)]) for part in text)  # + the null entry
        with ema_swapped(model, ema) as swapped:
            denoise = denoise_fn(swapped, choose_precision(cfg.precision, device), text=text)
            images = sample(denoise, cond, shape=shape, seeds=range(n), steps=GRID_STEPS, scheduler_config=dict(scheduler.config),
                            clamp=latent_space is None, device=device, progress=False)
        if latent_space is not None:
            images = latent_space.decode_in_chunks(images)  # (n, 3, H, W)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(images, path, nrow=8)
