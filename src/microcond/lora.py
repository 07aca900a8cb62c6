"""LoRA adapters on a diffusers UNet, through peft, as diffusers' SDXL LoRA scripts train them.

Adapters of rank ``r`` go on the attention projections (``to_q``, ``to_k``, ``to_v``,
``to_out.0``), Gaussian-initialised A and zero B, so training starts from the pretrained model;
they scale by ``alpha / r``. Everything else is frozen, except, when asked, SDXL's conditioning
MLP (``add_embedding``), the layer through which the micro-conditions enter, trained in full.

A LoRA file for :meth:`diffusers.StableDiffusionXLPipeline.load_lora_weights` (:func:`lora_file`)
holds each adapter with its scale folded into B (diffusers' convention without alphas: scale 1),
and a fully trained ``add_embedding`` as an exact full-rank adapter: for a layer with weight
change ``D`` (out x in) and bias change ``d``, ``B = I, A = D`` (or ``A = I, B = D`` when the
layer widens) and ``B``'s bias ``d``. The adapter config goes into the file's metadata.
"""

from __future__ import annotations

import torch

TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")  # diffusers' train_dreambooth_lora_sdxl.py
ADAPTER = "default"
CONDITIONING = ("add_embedding.linear_1", "add_embedding.linear_2")


def add_lora(unet: torch.nn.Module, rank: int, alpha: float, train_add_embedding: bool) -> None:
    """Freeze ``unet`` and give it trainable LoRA adapters (and its ``add_embedding``, if asked)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(TARGET_MODULES)),
                     adapter_name=ADAPTER)
    if train_add_embedding:
        unet.add_embedding.requires_grad_(True)


def lora_layers(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Module name -> peft LoRA layer, for every adapted module of ``unet``."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in unet.named_modules() if isinstance(module, LoraLayer)}


def _full_rank(delta: torch.Tensor, bias_delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """An exact adapter for a Linear layer's change: ``B @ A == delta``, B's bias the bias change."""
    out_features, in_features = delta.shape
    if out_features <= in_features:
        a, b = delta, torch.eye(out_features, dtype=delta.dtype)
    else:
        a, b = torch.eye(in_features, dtype=delta.dtype), delta
    return {"lora_A.weight": a, "lora_B.weight": b, "lora_B.bias": bias_delta}


def lora_file(unet: torch.nn.Module, base_add_embedding: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, adapter config) for a diffusers LoRA file of ``unet``'s adapters (keys without
    the ``unet.`` prefix), with ``add_embedding``'s change from ``base_add_embedding`` (its
    pretrained state, keys ``linear_1.weight`` ...) when that layer was trained in full."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, layer in lora_layers(unet).items():
        a = layer.lora_A[ADAPTER].weight.detach().float().cpu()
        b = layer.lora_B[ADAPTER].weight.detach().float().cpu() * layer.scaling[ADAPTER]
        tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = a, b
        ranks[name] = a.shape[0]
    if base_add_embedding is not None:
        trained = {k: v.detach().float().cpu() for k, v in unet.add_embedding.state_dict().items()}
        for name in CONDITIONING:
            short = name.split(".", 1)[1]
            adapter = _full_rank(trained[f"{short}.weight"] - base_add_embedding[f"{short}.weight"].float(),
                                 trained[f"{short}.bias"] - base_add_embedding[f"{short}.bias"].float())
            tensors.update({f"{name}.{k}": v for k, v in adapter.items()})
            ranks[name] = adapter["lora_A.weight"].shape[0]
        for name in lora_layers(unet):  # a bias in every B, as the loader then expects
            tensors[f"{name}.lora_B.bias"] = torch.zeros(tensors[f"{name}.lora_B.weight"].shape[0])
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {name: r for name, r in ranks.items() if r != common}
    config = {"r": common, "lora_alpha": common, "rank_pattern": pattern, "alpha_pattern": dict(pattern), "target_modules": sorted(ranks),
              "lora_bias": base_add_embedding is not None, "use_dora": False}
    return {k: v.contiguous() for k, v in tensors.items()}, config


def merge_lora(unet: torch.nn.Module) -> None:
    """Fold the adapters into the weights they adapt and remove them: a plain UNet again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in lora_layers(unet).items():
        layer.merge(adapter_names=[ADAPTER])
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        base = layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer
        setattr(parent, child, base)
    unet.__dict__.pop("peft_config", None)  # diffusers' PeftAdapterMixin state: no adapters left
    unet._hf_peft_config_loaded = False


def pretrained_tensors(pretrained: str, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a pretrained UNet folder (``--pretrained``, or its ``unet/``) whose names start
    with ``prefix``, read from its safetensors file or shards without loading the rest."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    folder = Path(pretrained)
    folder = folder / "unet" if (folder / "unet" / "config.json").exists() else folder
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["diffusion_pytorch_model.safetensors"]
    found = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as fh:
            found.update({key.removeprefix(prefix): fh.get_tensor(key) for key in fh.keys() if key.startswith(prefix)})
    if not found:
        raise ValueError(f"--pretrained {pretrained} holds no {prefix}* tensors")
    return found
