"""What a training config needs in device memory, before anything is loaded (``train --dry-run``).

The UNet is built from its config on the meta device (no weights read, no memory used), so the
parameter counts are exact. Training keeps fp32 weights, an fp32 gradient per trainable
parameter, AdamW's two fp32 moments and an fp32 EMA copy. Activations are an estimate: one
forward on the meta device at the per-rank batch and the training resolution (latents for a
VAE run), summing the outputs of every leaf module (what backward keeps, about), at 2 bytes an
element under bf16 autocast. With gradient checkpointing (diffusers checkpoints each resnet and
transformer block) it keeps those blocks' inputs and recomputes one block at a time. The
estimate has not been checked against a GPU's measured peak. The frozen VAE and text encoders
(``--vae``, ``--text-encoders``) are counted from their configs too, in fp32 as they are loaded
(the text encoders as 0 with ``--text-cache``, which frees them once the captions are cached),
and data-parallel runs add DDP's fp32 gradient buckets. With LoRA (``--lora-rank``) the adapters are
added on the meta device too: gradients, moments and EMA count only what trains, while the
activations stay (backward still runs through the frozen layers to reach the adapters). The EMA
counts 0 on the device with ``--ema cpu`` or ``off``; ``--optimizer adamw8bit`` keeps 1 byte per
moment (bitsandbytes' block-wise absmax adds about 1/2048 of that, left out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from microcond.cond.embedder import MicroCondEmbedder
from microcond.model import build_unet
from microcond.train.config import TrainConfig

CHECKPOINTED = ("ResnetBlock2D", "Transformer2DModel")  # what diffusers' gradient checkpointing wraps
ACTIVATION_BYTES = 2  # bf16 autocast
GIB = 2**30
CARDS = {"24 GB": 22.0 * GIB, "48 GB": 44.5 * GIB, "80 GB": 74.5 * GIB}  # what a card of that size holds for a process, about


def activation_elements(unet: torch.nn.Module, batch: int, size: tuple[int, int]) -> tuple[int, int]:
    """(without, with gradient checkpointing): elements kept for backward in one training step."""
    leaf_out: list[tuple[torch.nn.Module, int]] = []
    blocks: list[tuple[int, int]] = []  # (input elements, elements of its leaves) per checkpointed block
    inside: list[int] = []

    def leaf(module: torch.nn.Module, args: Any, out: Any) -> None:
        n = out.numel() if torch.is_tensor(out) and not any(out is a for a in args) else 0  # an identity (dropout 0) keeps nothing new
        leaf_out.append((module, n))
        if inside:
            inside[-1] += n

    def enter(module: torch.nn.Module, args: Any) -> None:
        inside.append(0)

    def leave(module: torch.nn.Module, args: Any, out: Any) -> None:
        blocks.append((sum(a.numel() for a in args if torch.is_tensor(a)), inside.pop()))

    hooks = [m.register_forward_hook(leaf) for m in unet.modules() if not list(m.children())]
    for m in unet.modules():
        if type(m).__name__ in CHECKPOINTED:
            hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        channels = unet.config.in_channels
        pooled = unet.add_embedding.linear_1.in_features - unet.config.addition_time_embed_dim * 6
        context = unet.config.cross_attention_dim if isinstance(unet.config.cross_attention_dim, int) else unet.config.cross_attention_dim[0]
        with torch.no_grad():
            unet(torch.zeros(batch, channels, *size, device="meta"), torch.zeros(batch, dtype=torch.long, device="meta"),
                 torch.zeros(batch, 77 if context > 256 else 1, context, device="meta"),
                 added_cond_kwargs={"text_embeds": torch.zeros(batch, pooled, device="meta"),
                                    "micro_embeds": torch.zeros(batch, unet.config.addition_time_embed_dim * 6, device="meta")})
    finally:
        for h in hooks:
            h.remove()
    total = sum(n for _, n in leaf_out)
    in_blocks = sum(n for _, n in blocks)
    checkpointed = total - in_blocks + sum(i for i, _ in blocks) + max((n for _, n in blocks), default=0)
    return total, checkpointed


def _frozen_parameters(cfg: TrainConfig) -> dict[str, int]:
    """Parameters of the frozen VAE and text encoders, from their configs on the meta device."""
    counts = {}
    with torch.device("meta"):
        if cfg.vae:
            from diffusers import AutoencoderKL

            counts["VAE (frozen)"] = sum(p.numel() for p in AutoencoderKL.from_config(AutoencoderKL.load_config(cfg.vae)).parameters())
        if cfg.text_encoders:
            from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

            root = Path(cfg.text_encoders)
            counts["text encoders (frozen)"] = (
                sum(p.numel() for p in CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")).parameters())
                + sum(p.numel() for p in CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2")).parameters()))
    return counts


def memory_plan(cfg: TrainConfig, world_size: int = 1, unet: torch.nn.Module | None = None) -> dict[str, Any]:
    """Bytes per device for ``cfg`` (module doc); ``unet`` skips building one (a meta-device UNet)."""
    if unet is None:
        embedder = MicroCondEmbedder(signals=cfg.signals)
        with torch.device("meta"):
            unet = build_unet(cfg.preset, cfg.resolution, embedder, cfg.pretrained, weights=False, time_embed_dim=cfg.time_embed_dim)
            if cfg.lora_rank:
                from microcond.lora import add_lora

                add_lora(unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_add_embedding)
    adapters = sum(p.numel() for n, p in unet.named_parameters() if ".lora_" in n)
    parameters = sum(p.numel() for p in unet.parameters()) - adapters
    pooled_slot = 0 if cfg.text_encoders else (cfg.num_classes + 1) * (unet.add_embedding.linear_1.in_features - unet.config.addition_time_embed_dim * 6)
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad) + pooled_slot  # the class vectors train beside the UNet
    batch = cfg.batch_size // (world_size * cfg.grad_accumulation)
    if batch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} leaves no image per rank with {world_size} ranks x grad_accumulation {cfg.grad_accumulation}")
    size = (cfg.resolution // 8, cfg.resolution // 8) if cfg.vae else (cfg.resolution, cfg.resolution)
    plain, checkpointed = activation_elements(unet, batch, size)
    frozen = _frozen_parameters(cfg)
    moments = ("AdamW moments (8-bit)", trainable * 2) if cfg.optimizer == "adamw8bit" else ("AdamW moments (fp32)", trainable * 8)
    ema = {"device": ("EMA (fp32)", trainable * 4), "cpu": ("EMA (fp32, on the CPU)", 0), "off": ("EMA (off)", 0)}[cfg.ema]
    rows = {"weights (fp32)": (parameters + adapters + pooled_slot) * 4, "gradients (fp32)": trainable * 4, moments[0]: moments[1],
            ema[0]: ema[1], **{name: n * 4 for name, n in frozen.items()}}  # frozen models are loaded in fp32
    if cfg.text_cache and "text encoders (frozen)" in rows:  # freed once the distinct captions are cached
        rows["text encoders (frozen)"] = 0
    if world_size > 1:
        rows["DDP gradient buckets (fp32)"] = trainable * 4
    fixed = sum(rows.values())
    return {"unet_parameters": parameters, "trainable_parameters": trainable, "adapter_parameters": adapters, "ema_host_bytes": trainable * 4 if cfg.ema == "cpu" else 0, "batch_per_rank": batch, "rows": rows,
            "activations": plain * ACTIVATION_BYTES, "activations_checkpointed": checkpointed * ACTIVATION_BYTES,
            "total": fixed + (checkpointed if cfg.gradient_checkpointing else plain) * ACTIVATION_BYTES,
            "total_checkpointed": fixed + checkpointed * ACTIVATION_BYTES, "total_plain": fixed + plain * ACTIVATION_BYTES}


def largest_batch(plan: dict[str, Any], capacity: float, checkpointed: bool) -> int:
    """The largest per-rank batch whose plan fits ``capacity`` bytes (activations grow linearly with
    the batch); 0 when the fixed part alone does not fit."""
    per_image = (plan["activations_checkpointed"] if checkpointed else plan["activations"]) / plan["batch_per_rank"]
    fixed = plan["total_plain"] - plan["activations"]
    return max(0, int((capacity - fixed) // per_image))


def _size(value: float) -> str:
    return f"{value / GIB:.2f} GiB" if value >= GIB else f"{value / 2**20:.1f} MiB"


def describe(plan: dict[str, Any]) -> list[str]:
    """The plan as lines for the terminal."""
    adapters = f", LoRA adapters {plan['adapter_parameters']:,}" if plan["adapter_parameters"] else ""
    lines = [f"memory plan per device: {plan['trainable_parameters']:,} trainable parameters (UNet {plan['unet_parameters']:,}{adapters}), "
             f"batch {plan['batch_per_rank']} per rank"]
    lines += [f"  {name:<28} {_size(value):>12}" for name, value in plan["rows"].items()]
    lines += [f"  {'activations (estimate)':<28} {_size(plan['activations']):>12}, {_size(plan['activations_checkpointed'])} with --gradient-checkpointing",
              f"  {'total':<28} {_size(plan['total_plain']):>12}, {_size(plan['total_checkpointed'])} with --gradient-checkpointing"]
    fits = [f"{card}: {largest_batch(plan, capacity, False)} ({largest_batch(plan, capacity, True)} checkpointed)" for card, capacity in CARDS.items()]
    lines.append(f"  largest batch per rank, by card: {'; '.join(fits)}")
    if plan["ema_host_bytes"]:
        lines.append(f"  and {_size(plan['ema_host_bytes'])} of host memory for the EMA (--ema cpu)")
    return lines
