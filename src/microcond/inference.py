"""Sampling, sweeps and metrics of a trained run: what ``microcond sample/sweep/evaluate`` do.

Conditions default to SDXL's inference defaults: original size = target size = the model's
resolution, crop (0, 0). Negative micro-conditions take the positive value of every field the
user leaves out, so a negative crop alone is honoured (diffusers ignores it unless both
negative sizes are given).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from microcond.record import MicroCond
from microcond.runs import denoise_fn, load_run
from microcond.sample import crop_sweep, make_cond, original_size_sweep, sample, sweep, uncond_for
from microcond.runtime import choose_precision

Pair = tuple[int, int]


@dataclass(frozen=True)
class Query:
    """One sampling request: micro-conditions, class, guidance partner."""

    original_size: Pair | None = None
    crop_top_left: Pair = (0, 0)
    target_size: Pair | None = None
    label: int = -1
    guidance: float = 1.0
    negative_original_size: Pair | None = None
    negative_crop_top_left: Pair | None = None
    negative_target_size: Pair | None = None
    null_micro: bool = False

    def micro(self, resolution: int) -> MicroCond:
        target = self.target_size or (resolution, resolution)
        return MicroCond(self.original_size or target, self.crop_top_left, target)

    def negative(self, resolution: int) -> MicroCond | None:
        given = (self.negative_original_size, self.negative_crop_top_left, self.negative_target_size)
        if all(v is None for v in given):
            return None
        pos = self.micro(resolution)
        return MicroCond(given[0] or pos.original_size, given[1] or pos.crop_top_left, given[2] or pos.target_size)


class Model:
    """A run loaded once for inference (EMA weights), with its schedule and precision."""

    def __init__(self, run_dir: str | Path, ema: bool = True, precision: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.model, self.cfg, self.scheduler_config, self.step = load_run(self.run_dir, ema=ema)
        device = torch.device("cpu")
        self.denoise = denoise_fn(self.model, choose_precision(precision or self.cfg.precision, device))
        self.shape = (3, self.cfg.resolution, self.cfg.resolution)

    def check_label(self, label: int) -> int:
        if label >= self.cfg.num_classes or label < -1:
            classes = f"0..{self.cfg.num_classes - 1} or -1" if self.cfg.num_classes else "-1 (the model has no classes)"
            raise ValueError(f"--class {label} is not a class of this model; expected {classes}")
        return label

    def draw(self, query: Query, seeds: Sequence[int], labels: Sequence[int] | None = None, *, steps: int = 50, scheduler: str = "ddim", batch_size: int = 64, progress: bool = True) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1]: one sample per seed, all with ``query``'s conditions."""
        micro = query.micro(self.cfg.resolution)
        if micro.target_size != self.shape[1:]:
            raise ValueError(f"--target-size {micro.target_size} differs from this pixel model's resolution {self.shape[1:]}")
        labels = [self.check_label(v) for v in (labels if labels is not None else [query.label] * len(seeds))]
        cond = make_cond(micro, labels, n=len(seeds))
        uncond = None
        if query.guidance != 1.0:
            uncond = uncond_for(cond, negative=query.negative(self.cfg.resolution), null_micro=query.null_micro)
        return sample(self.denoise, cond, shape=self.shape, seeds=seeds, scheduler=scheduler, steps=steps, guidance=query.guidance, uncond=uncond, batch_size=batch_size, scheduler_config=self.scheduler_config, progress=progress)

    def sweep(self, kind: str, values: Sequence, seeds: Sequence[int], query: Query, *, steps: int = 50, scheduler: str = "ddim", progress: bool = True) -> tuple[torch.Tensor, list[str]]:
        """(S, V, 3, H, W) and column labels for an original-size (Fig. 3) or crop (Fig. 4) sweep."""
        target = query.micro(self.cfg.resolution).target_size
        if kind == "original_size":
            conds, columns = original_size_sweep(values, target)
        else:
            conds, columns = crop_sweep(values, target, query.original_size)
        images = sweep(self.denoise, conds, seeds, labels=self.check_label(query.label), shape=self.shape, guidance=query.guidance, negative=query.negative(self.cfg.resolution), null_micro=query.null_micro, steps=steps, scheduler=scheduler, scheduler_config=self.scheduler_config, progress=progress)
        return images, columns


def palette_for(ref_dir: str | Path) -> tuple | None:
    """The demo data's background palette when ``ref_dir`` is a demo-data split, else None."""
    root = Path(ref_dir)
    if any((p / "demo-data.json").exists() for p in (root, root.parent)):
        from microcond.demodata import PALETTE

        return PALETTE
    return None


def write_metrics(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
