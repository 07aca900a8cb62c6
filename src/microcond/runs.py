"""Reading a finished (or running) training run back: the model for sampling, and export.

A run directory holds ``config.json``, ``scheduler_config.json``, ``metrics.jsonl``,
``loss.png``, ``samples/`` and ``checkpoints/step-*/`` (see :mod:`microcond.checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from microcond import config as config_mod
from microcond.checkpoint import load_newest
from microcond.conditions import SIGNALS
from microcond.config import TrainConfig
from microcond.model import Denoiser


def run_config(run_dir: Path) -> TrainConfig:
    """The config a run was trained with."""
    if not (run_dir / "config.json").exists():
        raise ValueError(f"{run_dir} is not a training run (no config.json); pass the --out folder of `microcond train`")
    return config_mod.from_dict(json.loads((run_dir / "config.json").read_text()))


def load_run(run_dir: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> tuple[Denoiser, TrainConfig, dict, int]:
    """(denoiser in eval mode, config, scheduler config, step) from the newest checkpoint that verifies."""
    from microcond.train import build_denoiser

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


def export_diffusers(run_dir: str | Path, out_dir: str | Path, ema: bool = True) -> Path:
    """Write the (EMA) UNet as a plain diffusers ``UNet2DConditionModel`` folder, SDXL names kept.

    Beside it: ``class_embedding.safetensors`` (the pooled-slot vectors, row ``num_classes`` is
    the null class) and ``microcond.json`` (signals, classes, scheduler, training step).
    """
    model, cfg, scheduler_config, step = load_run(run_dir, ema=ema)
    out_dir = Path(out_dir)
    plain = UNet2DConditionModel.from_config(model.unet.config)
    plain.load_state_dict(model.unet.state_dict())
    plain.save_pretrained(out_dir, safe_serialization=True)
    if model.class_embedding is not None:
        save_file({"weight": model.class_embedding.weight.detach().contiguous()}, str(out_dir / "class_embedding.safetensors"))
    meta = {"signals": list(cfg.signals), "num_classes": cfg.num_classes, "resolution": cfg.resolution, "step": step, "ema": ema, "scheduler": scheduler_config}
    (out_dir / "microcond.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir
