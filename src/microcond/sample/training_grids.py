"""Sample grids written while a run trains: 16 samples from the EMA weights every
``sample_every`` steps, with SDXL's default inference conditions, one class per column.

The EMA weights are sampled from a resident copy of the denoiser, made once (a deep copy of the
training model: no rebuild, no second read of pretrained weights) and refreshed in place.
"""

from __future__ import annotations

import copy
from pathlib import Path
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


class TrainingGrids:
    """The loop's ``sample_grid`` (:func:`microcond.train.loop.train`): one grid PNG per call."""

    def __init__(self) -> None:
        self.shadow: Denoiser | None = None

    def ema_model(self, model: Denoiser, ema: dict[str, torch.Tensor]) -> Denoiser:
        """The resident copy holding the EMA weights (and the model's other state)."""
        if self.shadow is None:
            self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.shadow.load_state_dict(with_ema(model.state_dict(), ema))  # copies into the resident tensors
        return self.shadow

    def __call__(self, *, model: Denoiser, ema: dict[str, torch.Tensor], scheduler: DDPMScheduler, cfg: TrainConfig, path: Path,
                 device: torch.device, stage: Any = None) -> None:
        """With a VAE the samples are latents decoded by it; with text all share one training caption."""
        shadow = self.ema_model(model, ema)
        n, size = GRID_SAMPLES, (cfg.resolution, cfg.resolution)
        grid_text = getattr(stage, "grid_text", None)
        text = grid_text() if grid_text is not None else None  # one caption for all: label 0 of the table
        labels = [i % cfg.num_classes for i in range(n)] if cfg.num_classes else [0 if text is not None else -1] * n
        cond = make_cond(MicroCond(size, (0, 0), size), labels, n=n)
        latent_space = getattr(stage, "latent_space", None)
        shape = latent_space.latent_shape(size) if latent_space is not None else (3, *size)
        if text is not None:
            text = tuple(torch.cat([part, torch.zeros_like(part)]) for part in text)  # + the null entry
        denoise = denoise_fn(shadow, choose_precision(cfg.precision, device), text=text)
        images = sample(denoise, cond, shape=shape, seeds=range(n), steps=GRID_STEPS, scheduler_config=dict(scheduler.config),
                        clamp=latent_space is None, device=device, progress=False)
        if latent_space is not None:
            images = latent_space.decode_in_chunks(images)  # (n, 3, H, W)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(images, path, nrow=8)
