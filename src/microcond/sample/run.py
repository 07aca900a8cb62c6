"""A training run read back: its config and newest verified checkpoint, sampling with chosen
micro-conditions (what ``microcond sample/sweep/evaluate`` do), and export.

A run directory holds ``config.json``, ``scheduler_config.json``, ``metrics.jsonl``,
``loss.png``, ``samples/`` and ``checkpoints/step-*/`` (see :mod:`microcond.train.checkpoint`).
An export is written into a fresh sibling folder and renamed into place once complete.

Conditions default to SDXL's inference defaults: original size = target size = the model's
resolution, crop (0, 0). Negative micro-conditions take the positive value of every field the
user leaves out, so a negative crop alone is honoured (diffusers ignores it unless both
negative sizes are given).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from microcond.base.files import atomic_path, atomic_write_text
from microcond.cond.embedder import SIGNALS
from microcond.cond.record import MicroCond
from microcond.lora import merge_lora
from microcond.model import Denoiser, build_denoiser, center_bias, load_trained
from microcond.sample.samplers import crop_sweep, guidance_partners, make_cond, original_size_sweep, sample, sweep
from microcond.train import config as config_mod
from microcond.train.checkpoint import load_newest
from microcond.train.config import TrainConfig
from microcond.train.launch import choose_precision


def run_config(run_dir: Path) -> TrainConfig:
    """The config a run was trained with."""
    if not (run_dir / "config.json").exists():
        raise ValueError(f"{run_dir} is not a training run (no config.json); pass the --out folder of `microcond train`")
    return config_mod.from_dict(json.loads((run_dir / "config.json").read_text()))


def with_ema(weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model's state dict with its floating-point tensors replaced by their EMA (float32 in the
    checkpoint, cast to the model's dtype); buffers the EMA does not hold stay as they are."""
    return {**weights, **{k: v.to(weights[k].dtype) for k, v in ema.items()}}


def load_run(run_dir: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> tuple[Denoiser, TrainConfig, dict, int]:
    """(denoiser in eval mode, config, scheduler config, step) from the newest checkpoint that verifies."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    newest = load_newest(run_dir / "checkpoints", stems=("model", "ema") if ema else ("model",))
    if newest is None:
        raise ValueError(f"{run_dir} has no complete checkpoint yet; train longer than checkpoint_every steps")
    _, tensors, state = newest
    scheduler_config = json.loads((run_dir / "scheduler_config.json").read_text())
    model = build_denoiser(cfg)  # with LoRA: the pretrained UNet and fresh adapters, then the trained tensors
    weights = tensors["model"]
    load_trained(model, with_ema(weights, tensors["ema"]) if ema else weights, bool(cfg.lora_rank))
    return model.to(device).eval(), cfg, scheduler_config, state["step"]


def denoise_fn(model: Denoiser, precision: torch.dtype | None = None, text: tuple[torch.Tensor, torch.Tensor] | None = None):
    """``denoise(x, t, cond)`` for :mod:`microcond.sample.samplers` from a :class:`Denoiser`.

    A ``Cond`` always carries SDXL's six ids and one drop flag per SDXL signal; the model takes
    the ids and flags of the signals it was trained with. A text model takes ``text``, a prompt
    table ``(context (P + 1, L, D), pooled (P + 1, Pd))``: a row's label ``k`` picks prompt ``k``,
    the null label -1 the last entry (the negative prompt, or zeros: the dropped caption).
    """
    columns = [SIGNALS.index(s) for s in model.embedder.signals]
    device = next(model.parameters()).device
    if text is not None:
        text = (text[0].to(device), text[1].to(device))

    def denoise(x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        words = {}
        if text is not None:
            rows = torch.where(cond.labels < 0, len(text[0]) - 1, cond.labels).to(device)  # (B,)
            words = {"context": text[0][rows], "pooled": text[1][rows]}
        with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
            out = model(x, t, model.embedder.select(cond.ids), cond.drop[:, columns], None if text is not None else cond.labels, **words)
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
    if cfg.lora_rank:
        merge_lora(model.unet)  # the adapters folded into the weights: a plain SDXL UNet
    plain = UNet2DConditionModel.from_config(model.unet.config)
    plain.load_state_dict(center_bias(model.unet.state_dict(), model.micro_center, model.pooled_dim, prefix=""))  # SDXL-exact on plain F(ids)
    plain.save_pretrained(out_dir, safe_serialization=True)
    if model.class_embedding is not None:
        save_file({"weight": model.class_embedding.weight.detach().contiguous()}, str(out_dir / "class_embedding.safetensors"))
    meta = {"signals": list(cfg.signals), "num_classes": cfg.num_classes, "resolution": cfg.resolution, "step": step, "ema": ema, "scheduler": scheduler_config}
    (out_dir / "microcond.json").write_text(json.dumps(meta, indent=2) + "\n")


def export_lora(run_dir: str | Path, path: str | Path, ema: bool = True) -> Path:
    """Write a LoRA run's (EMA) adapters as one diffusers LoRA file (:func:`microcond.lora.lora_file`)
    that ``StableDiffusionXLPipeline.load_lora_weights`` loads onto the run's --pretrained UNet."""
    from microcond.lora import lora_file, pretrained_tensors

    run_dir, path = Path(run_dir), Path(path)
    cfg = run_config(run_dir)
    if not cfg.lora_rank:
        raise ValueError(f"{run_dir} trained the whole UNet, not LoRA adapters: export it with --diffusers or --pipeline")
    if path.is_dir() or path.suffix != ".safetensors":
        raise ValueError(f"--lora {path} must name a .safetensors file")
    model, _, _, step = load_run(run_dir, ema=ema)
    base = pretrained_tensors(cfg.pretrained, "add_embedding.") if cfg.lora_add_embedding else None
    tensors, config = lora_file(model.unet, base)
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    metadata = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps({f"unet.{k}": v for k, v in config.items()}, sort_keys=True),
                "microcond": json.dumps({"signals": list(cfg.signals), "step": step, "ema": ema, "pretrained": cfg.pretrained})}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({f"unet.{k}": v for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


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
    micro_guidance: float | None = None  # a separate scale for the micro-conditions (microcond.cond.guidance)
    negative_prompt: str | None = None  # text runs: the guidance partner's prompt (None: the dropped caption, zeros)

    def micro(self, resolution: int) -> MicroCond:
        target = self.target_size or (resolution, resolution)
        return MicroCond(self.original_size or target, self.crop_top_left, target)

    def negative(self, resolution: int) -> MicroCond | None:
        given = (self.negative_original_size, self.negative_crop_top_left, self.negative_target_size)
        if all(v is None for v in given):
            return None
        pos = self.micro(resolution)
        return MicroCond(given[0] or pos.original_size, given[1] or pos.crop_top_left, given[2] or pos.target_size)


class Run:
    """A training run loaded once (EMA weights by default): its config, schedule and precision,
    and what is done with it: draw samples, sweep a condition, export. A run trained with text
    encoders samples from prompts (``prompts``: sample ``i`` takes prompt ``i % len(prompts)``);
    a run with a VAE samples latents and decodes them."""

    def __init__(self, run_dir: str | Path, ema: bool = True, precision: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.model, self.cfg, self.scheduler_config, self.step = load_run(self.run_dir, ema=ema)
        self.precision = choose_precision(precision or self.cfg.precision, torch.device("cpu"))
        self.denoise = denoise_fn(self.model, self.precision)
        self.size = (self.cfg.resolution, self.cfg.resolution)
        self.latent_space = None
        if self.cfg.vae:
            from microcond.sdxl.latents import LatentSpace

            self.latent_space = LatentSpace(self.cfg.vae)
        self.shape = self.latent_space.latent_shape(self.size) if self.latent_space else (3, *self.size)
        self.text = self.model.class_embedding is None  # trained with text: sampled from prompts
        self._encoders = None

    def check_label(self, label: int) -> int:
        if label >= self.cfg.num_classes or label < -1:
            classes = f"0..{self.cfg.num_classes - 1} or -1" if self.cfg.num_classes else "-1 (the model has no classes)"
            raise ValueError(f"--class {label} is not a class of this model; expected {classes}")
        return label

    def _denoiser(self, query: Query, prompts: Sequence[str] | None):
        """The denoiser for this query: the run's, or one holding the prompts' text table."""
        if not self.text:
            if prompts or query.negative_prompt is not None:
                raise ValueError("--prompt needs a run trained with text encoders (--preset sdxl --text-encoders); this run "
                                 "has class vectors: choose a class with --class")
            return self.denoise
        if not prompts or any(not isinstance(p, str) for p in prompts):
            raise ValueError(f"{self.run_dir} was trained with text: give --prompt TEXT or --prompts FILE (one prompt per line)")
        if self._encoders is None:
            from microcond.sdxl.text import TextEncoders

            self._encoders = TextEncoders(self.cfg.text_encoders)
        context, pooled = self._encoders.encode([*prompts, query.negative_prompt or ""])  # (P + 1, L, D), (P + 1, Pd)
        if query.negative_prompt is None:  # the dropped caption that training used for guidance
            context[-1], pooled[-1] = 0.0, 0.0
        return denoise_fn(self.model, self.precision, text=(context, pooled))

    def _labels(self, n: int, query: Query, labels: Sequence[int] | None, prompts: Sequence[str] | None) -> list[int]:
        if self.text:
            return [i % len(prompts) for i in range(n)]
        return [self.check_label(v) for v in (labels if labels is not None else [query.label] * n)]

    def _pixels(self, samples: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1]: the samples, decoded by the run's VAE when they are latents."""
        if self.latent_space is None:
            return samples
        return self.latent_space.decode_in_chunks(samples)

    def draw(self, query: Query, seeds: Sequence[int], labels: Sequence[int] | None = None, *, prompts: Sequence[str] | None = None,
             steps: int = 50, scheduler: str = "ddim", batch_size: int = 64, progress: bool = True) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1]: one sample per seed, all with ``query``'s conditions."""
        micro = query.micro(self.cfg.resolution)
        if micro.target_size != self.size:
            raise ValueError(f"--target-size {micro.target_size} differs from this model's resolution {self.size}")
        denoise = self._denoiser(query, prompts)
        cond = make_cond(micro, self._labels(len(seeds), query, labels, prompts), n=len(seeds))
        partners = guidance_partners(cond, query.guidance, query.negative(self.cfg.resolution), query.null_micro, query.micro_guidance)
        samples = sample(denoise, cond, shape=self.shape, seeds=seeds, scheduler=scheduler, steps=steps, guidance=query.guidance,
                         **partners, batch_size=batch_size, scheduler_config=self.scheduler_config, clamp=self.latent_space is None,
                         progress=progress)
        return self._pixels(samples)

    def sweep(self, kind: str, values: Sequence, seeds: Sequence[int], query: Query, *, prompts: Sequence[str] | None = None,
              steps: int = 50, scheduler: str = "ddim", progress: bool = True) -> tuple[torch.Tensor, list[str]]:
        """(S, V, 3, H, W) and column labels for an original-size (Fig. 3) or crop (Fig. 4) sweep;
        a text run's row ``s`` takes prompt ``s % len(prompts)``."""
        target = query.micro(self.cfg.resolution).target_size
        if kind == "original_size":
            conds, columns = original_size_sweep(values, target)
        else:
            conds, columns = crop_sweep(values, target, query.original_size)
        denoise = self._denoiser(query, prompts)
        rows = self._labels(len(seeds), query, None, prompts)
        images = sweep(denoise, conds, seeds, labels=rows, shape=self.shape, guidance=query.guidance,
                       negative=query.negative(self.cfg.resolution), null_micro=query.null_micro, micro_guidance=query.micro_guidance,
                       steps=steps, scheduler=scheduler, scheduler_config=self.scheduler_config, clamp=self.latent_space is None,
                       progress=progress)
        if self.latent_space is not None:
            images = self._pixels(images.flatten(0, 1)).unflatten(0, images.shape[:2])
        return images, columns

    def sweep_grid(self, kind: str, values: Sequence, seeds: Sequence[int], query: Query, path: str | Path, *,
                   prompts: Sequence[str] | None = None, steps: int = 50, scheduler: str = "ddim", progress: bool = True) -> Path:
        """:meth:`sweep` written as a labelled grid PNG: a row per seed, a column per value."""
        from microcond.sample.grid import save_grid

        images, columns = self.sweep(kind, values, seeds, query, prompts=prompts, steps=steps, scheduler=scheduler, progress=progress)
        fixed = query.original_size
        what = "c_size sweep (paper Fig. 3)" if kind == "original_size" else \
            f"c_crop sweep, c_size {f'{fixed[0]}x{fixed[1]}' if fixed else 'target'} (paper Fig. 4)"
        return save_grid(images.flatten(0, 1), path, nrow=len(values), row_labels=[f"seed {s}" for s in seeds], col_labels=columns,
                         title=f"{self.run_dir.name} step {self.step}: {what}")

    def export(self, out_dir: str | Path, ema: bool = True) -> Path:
        """The run's UNet as a diffusers folder (:func:`export_diffusers`; a whole SDXL pipeline
        folder is :func:`microcond.sdxl.export_pipeline`)."""
        return export_diffusers(self.run_dir, out_dir, ema=ema)


def palette_for(ref_dir: str | Path) -> tuple | None:
    """The demo data's background palette when ``ref_dir`` is a demo-data split, else None."""
    root = Path(ref_dir)
    if any((p / "demo-data.json").exists() for p in (root, root.parent)):
        from microcond.demodata.build import PALETTE

        return PALETTE
    return None


def write_metrics(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
