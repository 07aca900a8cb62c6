"""Run configuration: one frozen dataclass, named presets, TOML files and CLI flags.

Resolution order: preset defaults, then the TOML file, then command-line flags. Every field
has exactly one flag (``batch_size`` -> ``--batch-size``). The resolved config is saved with
every run and checkpoint; resuming with different values for fields that change results is
refused, naming the fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

from microcond.base.files import atomic_write_text
from microcond.base.settings import out_of_range
from microcond.cond.record import SIGNALS
from microcond.data.buckets import parse_buckets
from microcond.data.urls import is_stream


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Sizes are pixels; probabilities in [0, 1]."""

    # Model
    preset: str = "tiny"  # tiny | small | sdxl
    pretrained: str = ""  # sdxl: local folder holding an SDXL checkpoint's unet/ (or the unet folder itself)
    resolution: int = 32  # training size of square buckets; the model's sample size
    num_classes: int = 0  # 0 = unconditional; otherwise a learned vector per class in the pooled slot
    signals: tuple[str, ...] = SIGNALS  # micro-conditions the model sees: any subset, () for none
    time_embed_dim: int = 0  # pixel presets: width of the timestep embedding and of the conditioning MLP; 0 = 4 x the first block's channels
    # Objective
    prediction_type: str = "epsilon"  # epsilon (SDXL's) | v_prediction (the pixel presets': it learns the crop, docs/results.md)
    loss_weight_cap: float = 0.0  # v_prediction: cap on a noise level's weight in epsilon terms (v weighs 1 + 1/SNR); 0 = none
    timestep_sampling: str = "uniform"  # uniform (SDXL's DDPM) | lognormal (EDM: log sigma ~ N(lognormal_mean, lognormal_std^2))
    lognormal_mean: float = -1.2  # EDM's P_mean
    lognormal_std: float = 1.2  # EDM's P_std
    uniform_timestep_share: float = 0.0  # lognormal: share of timesteps drawn uniformly instead (the noisiest levels, where layout and crop are decided)
    loss_weighting: str = "none"  # weight of the clean-image error: none (the prediction's own) | edm (SNR + 1/sigma_data^2) | min_snr (min(SNR, gamma))
    sigma_data: float = 0.5  # edm weighting: the data's standard deviation
    min_snr_gamma: float = 5.0  # min_snr weighting: gamma
    zero_init_conditioning: bool = False  # pixel presets: the conditioning MLP's output layer starts at zero (DiT, EDM2)
    center_micro_features: bool = False  # pixel presets: the conditioning MLP sees F(ids) - F(default ids), the difference folded into its bias on export
    beta_schedule: str = "linear"  # diffusers DDPMScheduler beta schedule (SDXL: scaled_linear)
    offset_noise: float = 0.0  # SDXL section 2.5 uses 0.05
    cond_dropout: float = 0.1  # per-signal micro-condition dropout to the zero embedding (sgm ucg_rate)
    class_dropout: float = 0.1  # label dropout to the null class, for classifier-free guidance
    class_vector_std: float = 0.02  # initial scale of the class vectors in the pooled slot (the micro features beside them: 0.71)
    # Data
    data: str = ""  # image folder (with its scan index), local shards, or shards to stream ('pipe:...', URLs, {000..099}, a::b)
    buckets: str = ""  # bucket set spec (see microcond.data.buckets.parse_buckets); "" = square:RESOLUTION
    crop_mode: str = "random"  # random (paper Algorithm 1) | center
    flip_probability: float = 0.0
    min_original_edge: int = 0  # discard images whose original short edge is smaller (paper's "512-only")
    original_size_source: str = "file"  # the c_size the model is told: file (SDXL) | effective (scan --effective) | min of both
    workers: int = 0  # DataLoader worker processes per rank
    shuffle_buffer: int = 1000  # streamed shards: samples held to shuffle across shards (0 = shard order)
    # SDXL fine-tuning (microcond.sdxl); the sdxl preset defaults both folders to --pretrained's
    vae: str = ""  # local AutoencoderKL folder: train on its latents; "" = pixel space
    text_encoders: str = ""  # folder with text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/; "" = class vectors
    caption_dropout: float = 0.1  # per sample: context and pooled text set to zero (sgm ucg_rate)
    latent_cache: bool = False  # encode each image's crops once into CACHE/latents-<key>/ (float16, memory-mapped)
    text_cache: bool = False  # encode each distinct caption once into CACHE/text-<key>/ and free the text encoders
    latent_crops: int = 1  # crops cached per image; epoch e trains on crop e mod latent_crops
    lora_rank: int = 0  # sdxl: train LoRA adapters of this rank on the attention projections, the UNet frozen (microcond.lora); 0 = full fine-tuning
    lora_alpha: float = 0.0  # adapter scale alpha / rank; 0 = the rank (scale 1)
    lora_add_embedding: bool = False  # with lora_rank: also train the conditioning MLP (add_embedding), where the micro-conditions enter, in full
    # Optimisation
    steps: int = 3000
    batch_size: int = 32  # per optimizer step, over all ranks and accumulation rounds
    grad_accumulation: int = 1
    lr: float = 1e-3
    add_embedding_lr: float = 0.0  # learning rate of the UNet's conditioning MLP (add_embedding); 0 = lr
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    warmup_steps: int = 100
    ema_decay: float = 0.999
    ema: str = "device"  # where the EMA of the trained weights lives: device (beside the model) | cpu (off the GPU) | off (sample the weights)
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes' 8-bit moments, where it is installed)
    precision: str = "auto"  # auto (bf16 where the hardware has fast bf16) | bf16 | fp32
    gradient_checkpointing: bool = False  # recompute UNet activations in the backward pass: less memory, slower
    seed: int = 0
    # Bookkeeping (may change between resumes)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 1000  # 0 disables periodic sample grids
    log_every: int = 25
    log_to: str = ""  # also log to: tensorboard (RUN/tensorboard/); metrics.jsonl stays the record

    def __post_init__(self) -> None:
        # One spelling per folder, so that "DIR/", "./DIR" and "/abs/DIR" are the same config.
        for name in PATH_FIELDS:
            if getattr(self, name) and not (name == "data" and is_stream(self.data)):
                object.__setattr__(self, name, os.path.abspath(getattr(self, name)))
        finite = lambda *values: all(math.isfinite(v) for v in values)  # noqa: E731
        checks = [
            (self.preset in PRESETS, "preset", f"one of {sorted(PRESETS)}"),
            (self.resolution > 0 and self.resolution % 8 == 0, "resolution", "a positive multiple of 8"),
            (self.num_classes >= 0, "num_classes", ">= 0"),
            (all(s in SIGNALS for s in self.signals) and len(set(self.signals)) == len(self.signals), "signals", f"distinct names from {SIGNALS}"),
            (self.prediction_type in ("epsilon", "v_prediction"), "prediction_type", "epsilon or v_prediction"),
            (self.beta_schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"), "beta_schedule", "linear, scaled_linear or squaredcos_cap_v2"),
            (self.crop_mode in ("random", "center"), "crop_mode", "random or center"),
            (self.original_size_source in ("file", "effective", "min"), "original_size_source", "file, effective or min"),
            (self.precision in ("auto", "bf16", "fp32"), "precision", "auto, bf16 or fp32"),
            (self.steps > 0 and self.batch_size > 0 and self.grad_accumulation > 0, "steps/batch_size/grad_accumulation", "positive"),
            (self.batch_size % self.grad_accumulation == 0, "batch_size", f"a multiple of grad_accumulation={self.grad_accumulation}"),
            (self.keep_checkpoints >= 1 and self.checkpoint_every > 0, "keep_checkpoints/checkpoint_every", "positive"),
            (self.min_original_edge >= 0 and self.workers >= 0 and self.shuffle_buffer >= 0, "min_original_edge/workers/shuffle_buffer", ">= 0"),
            (self.preset != "sdxl" or bool(self.pretrained), "pretrained", "a local folder for preset sdxl"),
            (self.preset == "sdxl" or not (self.vae or self.text_encoders), "vae/text_encoders", "empty for pixel presets (latents and text need preset sdxl)"),
            (not (self.text_encoders and self.num_classes), "num_classes", "0 when text_encoders is set (text takes the pooled slot)"),
            (bool(self.vae) or not self.latent_cache, "latent_cache", "off without --vae (pixel space has no latents)"),
            (self.latent_crops >= 1, "latent_crops", ">= 1"),
            (finite(self.lr, self.add_embedding_lr) and self.lr > 0 and self.add_embedding_lr >= 0, "lr/add_embedding_lr", "finite, lr > 0 and add_embedding_lr >= 0"),
            (finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a finite number >= 0"),
            (len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas", "two numbers in [0, 1), like 0.9 0.99"),
            (finite(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "a finite number >= 0 (0 disables clipping)"),
            (self.warmup_steps >= 0, "warmup_steps", ">= 0"),
            (finite(self.loss_weight_cap) and (self.loss_weight_cap == 0 or self.loss_weight_cap >= 1), "loss_weight_cap", "0 (no cap) or a finite number >= 1"),
            (self.timestep_sampling in ("uniform", "lognormal"), "timestep_sampling", "uniform or lognormal"),
            (finite(self.lognormal_mean, self.lognormal_std) and self.lognormal_std > 0, "lognormal_mean/lognormal_std", "finite, lognormal_std > 0"),
            (self.loss_weighting in ("none", "edm", "min_snr"), "loss_weighting", "none, edm or min_snr"),
            (self.loss_weighting == "none" or not self.loss_weight_cap, "loss_weighting/loss_weight_cap", "one weighting: loss_weighting none with a cap, or no cap"),
            (finite(self.sigma_data, self.min_snr_gamma) and self.sigma_data > 0 and self.min_snr_gamma > 0, "sigma_data/min_snr_gamma", "finite and > 0"),
            (self.preset != "sdxl" or not self.zero_init_conditioning, "zero_init_conditioning", "off for preset sdxl (it would erase the pretrained conditioning)"),
            (self.preset != "sdxl" or not self.center_micro_features, "center_micro_features", "off for preset sdxl"),
            (self.time_embed_dim >= 0, "time_embed_dim", ">= 0 (0: 4 x the first block's channels)"),
            (self.preset != "sdxl" or not self.time_embed_dim, "time_embed_dim", "0 for preset sdxl (the checkpoint sets it)"),
            (finite(self.class_vector_std) and self.class_vector_std > 0, "class_vector_std", "a finite number > 0"),
            (self.lora_rank >= 0 and finite(self.lora_alpha) and self.lora_alpha >= 0, "lora_rank/lora_alpha", "lora_rank >= 0 and a finite lora_alpha >= 0"),
            (self.preset == "sdxl" or not self.lora_rank, "lora_rank", "0 for the pixel presets (LoRA adapts attention layers, which they lack; preset sdxl)"),
            (bool(self.lora_rank) or not self.lora_add_embedding, "lora_add_embedding", "off without lora_rank (full fine-tuning trains add_embedding anyway)"),
            (self.ema in ("device", "cpu", "off"), "ema", "device, cpu or off"),
            (self.optimizer in ("adamw", "adamw8bit"), "optimizer", "adamw or adamw8bit"),
            (self.log_to in ("", "tensorboard"), "log_to", "'' (metrics.jsonl only) or tensorboard"),
            (self.log_every >= 1 and self.sample_every >= 0, "log_every/sample_every", "log_every >= 1 and sample_every >= 0"),
            (0 <= self.seed < 2**64, "seed", "in [0, 2**64)"),
            (bool(self.text_encoders) or not self.text_cache, "text_cache", "off without --text-encoders"),
        ]
        for name in ("cond_dropout", "class_dropout", "caption_dropout", "flip_probability", "ema_decay", "offset_noise", "uniform_timestep_share"):
            checks.append((0.0 <= getattr(self, name) <= 1.0, name, "in [0, 1]"))
        checks += [(False, name, expected) for name, expected in out_of_range(self, exempt=("seed",))]
        for ok, name, expected in checks:
            if not ok:
                shown = {n: getattr(self, n) for n in name.split("/")}
                raise ValueError(f"config {name} must be {expected}, got {shown if '/' in name else shown[name]!r} (flag --{name.split('/')[0].replace('_', '-')})")
        try:
            parse_buckets(self.bucket_spec)
        except ValueError as err:
            raise ValueError(f"config buckets: {err} (flag {'--buckets' if self.buckets else '--resolution'})") from None

    @property
    def bucket_spec(self) -> str:
        return self.buckets or f"square:{self.resolution}"


# Named presets: overrides of the defaults above (DiT's DiT_models, nanoGPT's GPTConfig).
# The pixel presets share one recipe, chosen by the recipe ablation (docs/results.md): v-prediction
# at uniform timesteps with the clean-image error weighted SNR + 1/4^2 (EDM's weight with
# sigma_data 4: between epsilon's SNR, which ignores the layout and so the crop, and v's SNR + 1,
# which loses the size effect), centred micro features (without them the conditioning MLP's
# units die and take class, size and crop with them), class vectors starting at the scale of the
# micro features beside them (at 0.02 the class barely reaches the model) and a conditioning MLP
# 256 wide (the tiny preset's own width, 128, holds class and crop together only under guidance).
PIXEL_RECIPE = dict(prediction_type="v_prediction", timestep_sampling="uniform", loss_weighting="edm", sigma_data=4.0, center_micro_features=True,
                    class_vector_std=1.0, time_embed_dim=256)
PRESETS: dict[str, dict] = {
    "tiny": dict(resolution=32, batch_size=32, lr=1e-3, **PIXEL_RECIPE),
    "small": dict(resolution=64, batch_size=32, lr=5e-4, **PIXEL_RECIPE),
    "sdxl": dict(resolution=1024, caption_dropout=0.1, buckets="sdxl", batch_size=4, lr=1e-5, beta_schedule="scaled_linear", ema_decay=0.9999, warmup_steps=0, offset_noise=0.0),
}

# Where the sdxl preset finds its VAE and text encoders inside --pretrained when not given.
PRETRAINED_PARTS = {"vae": "vae", "text_encoders": "."}

# Folders, stored absolute and without a trailing slash.
PATH_FIELDS = ("data", "pretrained", "vae", "text_encoders")

# Fields that do not change what a run computes, so a resumed run may change them.
RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "keep_checkpoints", "sample_every", "log_every", "workers", "gradient_checkpointing", "log_to"})


def _field_type(f: dataclasses.Field) -> type:
    return typing.get_type_hints(TrainConfig)[f.name]


def _coerce(name: str, value, kind) -> object:
    """Convert a TOML/JSON value to the field's type, with a clear error."""
    origin = typing.get_origin(kind)
    try:
        if origin is tuple:
            inner = typing.get_args(kind)[0]
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            return tuple(_coerce(name, v, inner) for v in value)
        if kind is bool:
            if isinstance(value, str):
                words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
                return words[value.lower()]
            if value not in (0, 1):  # True, False, 1, 0
                raise TypeError
            return bool(value)
        if isinstance(value, bool) or (kind is str and not isinstance(value, str)):  # TOML `steps = true`, `data = 5`
            raise TypeError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise TypeError
        return kind(value)
    except (TypeError, ValueError, KeyError):
        raise ValueError(f"config field {name!r} expects {getattr(kind, '__name__', kind)}, got {value!r}") from None


def resolve(preset: str | None = None, toml_path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Build the config: preset, then the TOML file (flat keys), then explicit overrides."""
    values: dict = {}
    if toml_path:
        try:
            with open(toml_path, "rb") as fh:
                values.update(tomllib.load(fh))
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config file {toml_path} is not valid TOML: {err}") from None
        except UnicodeDecodeError:
            raise ValueError(f"config file {toml_path} is not UTF-8 text: a TOML file of flat keys was expected") from None
        except OSError as err:
            raise ValueError(f"cannot read config file {toml_path}: {err.strerror or err}") from None
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    chosen = values.pop("preset") if "preset" in values else preset or "tiny"
    if not isinstance(chosen, str) or chosen not in PRESETS:
        raise ValueError(f"unknown preset {chosen!r}; choose one of {sorted(PRESETS)}")
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; known fields: {', '.join(sorted(known))}")
    merged = {**PRESETS[chosen], **values, "preset": chosen}
    if chosen == "sdxl" and merged.get("pretrained"):
        for name, part in PRETRAINED_PARTS.items():
            merged.setdefault(name, str(Path(merged["pretrained"]) / part))
    return TrainConfig(**{k: _coerce(k, v, _field_type(known[k])) for k, v in merged.items()})


def to_dict(cfg: TrainConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def from_dict(values: dict) -> TrainConfig:
    known = {f.name: f for f in fields(TrainConfig)}
    return TrainConfig(**{k: _coerce(k, v, _field_type(known[k])) for k, v in values.items() if k in known})


def save(cfg: TrainConfig, path: Path) -> None:
    atomic_write_text(path, json.dumps(to_dict(cfg), indent=2) + "\n")


def differing_fields(old: TrainConfig, new: TrainConfig) -> list[str]:
    """Fields whose values differ and that change what a run computes."""
    a, b = dataclasses.asdict(old), dataclasses.asdict(new)
    return [k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES]


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type = TrainConfig, only: Sequence[str] | None = None,
              helps: dict[str, str] | None = None) -> None:
    """One flag per field of the dataclass ``cls`` (``only`` these, when given), defaulting to None
    so that only flags given on the command line override. Used for the training config and the
    settings of the demo, the demo data and the experiments alike."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if only is not None and f.name not in only:
            continue
        kind = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        shown = f"default {'on' if default else 'off'}" if kind is bool else f"default {default!r}"
        text = helps.get(f.name, "") if helps else ""
        text = f"{text} ({shown})" if text and default not in (None, "") else text or shown
        if typing.get_origin(kind) is tuple:
            parser.add_argument(flag, nargs="*", default=None, metavar=f.name.upper(), help=text)
        elif kind is bool:
            parser.add_argument(flag, type=str, default=None, metavar="on|off", help=text)
        else:
            parser.add_argument(flag, type=_optional_inner(kind), default=None, help=text)


def _optional_inner(kind: type) -> type:
    """``str | None`` -> ``str``: the type argparse converts a given flag to."""
    inner = [a for a in typing.get_args(kind) if a is not type(None)]
    return inner[0] if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(inner) == 1 else kind


def flag_overrides(args: argparse.Namespace, cls: type = TrainConfig) -> dict:
    """The fields of ``cls`` given as flags (typed; a TrainConfig's are typed by :func:`resolve`)."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    if cls is TrainConfig:
        return given
    hints = typing.get_type_hints(cls)
    return {k: _coerce(k, v, _optional_inner(hints[k])) for k, v in given.items()}
