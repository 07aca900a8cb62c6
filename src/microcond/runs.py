"""Reading a finished (or running) training run back: the model for sampling, and export.

A run directory holds ``config.json``, ``scheduler_config.json``, ``metrics.jsonl``,
``loss.png``, ``samples/`` and ``checkpoints/step-*/`` (see :mod:`microcond.checkpoint`).
An export is written into a fresh sibling folder and renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from microcond import config as config_mod
from microcond.checkpoint import load_newest
from microcond.conditions import SIGNALS
from microcond.config import TrainConfig
from microcond.model import Denoiser, build_denoiser


def run_config(run_dir: Path) -> TrainConfig:
    """The config a run was trained with."""
    if not (run_dir / "config.json").exists():
        raise ValueError(f"{run_dir} is not a training run (no config.json); pass the --out folder of `microcond train`")
    return config_mod.from_dict(json.loads((run_dir / "config.json").read_text()))


def load_run(run_dir: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> tuple[Denoiser, TrainConfig, dict, int]:
    """(denoiser in eval mode, config, scheduler config, step) from the newest checkpoint that verifies."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    newest = load_newest(run_dir / "checkpoints", stems=("model", "ema") if ema else ("model",))
    if newest is None:
        raise ValueError(f"{run_dir} has no complete checkpoint yet; train longer than checkpoint_every steps")
    _, tensors, state = newest
    scheduler_config = json.loads((run_dir / "scheduler_config.json").read_text())
    model = build_denoiser(cfg)
    weights = tensors["model"]
    if ema:
        weights = {**weights, **{k: v.to(weights[k].dtype) for k, v in tensors["ema"].items()}}
    model.load_state_dict(weights)
    return model.to(device).eval(), cfg, scheduler_config, state["step"]


def denoise_fn(model: Denoiser, precision: torch.dtype | None = None, text: tuple[torch.Tensor, torch.Tensor] | None = None):
    """``denoise(x, t, cond)`` for :mod:`microcond.sample` from a :class:`Denoiser`.

    A ``Cond`` always carries SDXL's six ids and one drop flag per SDXL signal; the model takes
    the ids and flags of the signals it was trained with. A text model takes ``text``, one
    ``(context (1, L, D), pooled (1, P))`` for every row (text guidance: use the diffusers pipeline).
    """
    columns = [SIGNALS.index(s) for s in model.embedder.signals]
    device = next(model.parameters()).device

    def denoise(x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        words = {}
        if text is not None:
            words = {"context": text[0].to(device).expand(len(x), -1, -1), "pooled": text[1].to(device).expand(len(x), -1)}
        with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
            out = model(x, t, model.embedder.select(cond.ids), cond.drop[:, columns], cond.labels, **words)
        return out.float()

    return denoise


@contextlib.contextmanager
def export_folder(run_dir: Path, out_dir: Path, flag: str, marker: str) -> Iterator[Path]:
    """A fresh sibling of ``out_dir`` to write an export into, renamed to ``out_dir`` when the block completes.

    Refuses an ``out_dir`` that is, lies in or holds a folder the export reads (the run, its
    --pretrained, --vae, --text-encoders), an existing file, or a non-empty folder without
    ``marker`` (the file every export of ours holds). Only such an earlier export is ever replaced.
    """
    cfg = run_config(run_dir)
    sources = {"RUN": run_dir, "--pretrained": cfg.pretrained, "--vae": cfg.vae, "--text-encoders": cfg.text_encoders}
    out = out_dir.resolve()
    for name, source in sources.items():
        folder = Path(source).resolve() if source else None
        if folder is not None and (out == folder or folder in out.parents or out in folder.parents):
            raise ValueError(f"{flag} {out_dir} overlaps {name} {source}, which export reads from; choose a {flag} folder outside it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out_dir} is an existing file; choose a new folder, an empty one, or an earlier export to replace")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise ValueError(f"{flag} {out_dir} is a non-empty folder but not an earlier export (no {marker}); choose a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
        if out.exists():  # empty, or an earlier export: set aside until the new one is in place
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(staging, out)
            shutil.rmtree(old)
        else:
            os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only left after a failure


def export_diffusers(run_dir: str | Path, out_dir: str | Path, ema: bool = True) -> Path:
    """Write the (EMA) UNet as a plain diffusers ``UNet2DConditionModel`` folder, SDXL names kept.

    Beside it: ``class_embedding.safetensors`` (the pooled-slot vectors, row ``num_classes`` is
    the null class) and ``microcond.json`` (signals, classes, scheduler, training step).
    """
    out_dir = Path(out_dir)
    with export_folder(Path(run_dir), out_dir, "--diffusers", "microcond.json") as staging:
        write_unet(run_dir, staging, ema)
    return out_dir


def write_unet(run_dir: str | Path, out_dir: Path, ema: bool = True) -> None:
    """The body of :func:`export_diffusers`, written straight into ``out_dir``."""
    model, cfg, scheduler_config, step = load_run(run_dir, ema=ema)
    plain = UNet2DConditionModel.from_config(model.unet.config)
    plain.load_state_dict(model.unet.state_dict())
    plain.save_pretrained(out_dir, safe_serialization=True)
    if model.class_embedding is not None:
        save_file({"weight": model.class_embedding.weight.detach().contiguous()}, str(out_dir / "class_embedding.safetensors"))
    meta = {"signals": list(cfg.signals), "num_classes": cfg.num_classes, "resolution": cfg.resolution, "step": step, "ema": ema, "scheduler": scheduler_config}
    (out_dir / "microcond.json").write_text(json.dumps(meta, indent=2) + "\n")
