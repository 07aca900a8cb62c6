"""train --dry-run's memory plan: exact parameter arithmetic, checked on SDXL's published configs
(no weights), and an activation estimate that scales as it must."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path


from microcond.cli.main import main
from microcond.train.config import resolve
from microcond.train.memory import memory_plan

UNET = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "center_input_sample": False,
        "cross_attention_dim": 2048, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
        "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
        "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10], "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True}
VAE = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
       "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
       "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.13025, "up_block_types": ["UpDecoderBlock2D"] * 4}
TEXT = {"architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072, "max_position_embeddings": 77,
        "model_type": "clip_text_model", "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408}
TEXT2 = {"architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120, "max_position_embeddings": 77,
         "model_type": "clip_text_model", "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280, "vocab_size": 49408}


def sdxl_configs(root: Path) -> Path:
    """A folder with SDXL 1.0 base's published configs and no weights."""
    for name, cfg in (("unet", UNET), ("vae", VAE), ("text_encoder", TEXT), ("text_encoder_2", TEXT2)):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "config.json").write_text(json.dumps(cfg))
    return root


def test_the_plan_counts_sdxl_from_its_configs_without_weights(tmp_path):
    cfg = resolve(overrides={"preset": "sdxl", "pretrained": str(sdxl_configs(tmp_path)), "data": "x", "batch_size": 1})
    plan = memory_plan(cfg)
    assert plan["unet_parameters"] == plan["trainable_parameters"] == 2_567_463_684  # SDXL base's UNet
    rows = plan["rows"]
    assert rows["weights (fp32)"] == rows["gradients (fp32)"] == rows["EMA (fp32)"] == 4 * 2_567_463_684
    assert rows["AdamW moments (fp32)"] == 8 * 2_567_463_684
    assert rows["VAE (frozen)"] == 4 * 83_653_863 and rows["text encoders (frozen)"] == 4 * (123_060_480 + 694_659_840)
    assert 0 < plan["activations_checkpointed"] < plan["activations"]


def test_the_plan_of_a_pixel_preset_matches_the_denoiser_it_builds():
    from microcond.model import build_denoiser

    cfg = resolve("tiny", overrides={"num_classes": 9})
    trainable = sum(p.numel() for p in build_denoiser(cfg).parameters() if p.requires_grad)
    plan = memory_plan(cfg)
    assert plan["trainable_parameters"] == trainable and plan["rows"]["AdamW moments (fp32)"] == 8 * trainable
    double = memory_plan(replace(cfg, batch_size=64))
    assert double["activations"] == 2 * plan["activations"] and double["activations_checkpointed"] == 2 * plan["activations_checkpointed"]
    import pytest

    with pytest.raises(ValueError, match="batch_size 32 leaves no image per rank with 64 ranks"):
        memory_plan(cfg, world_size=64)
    halved = memory_plan(cfg, world_size=2)  # each rank holds half the batch
    assert halved["batch_per_rank"] == 16 and halved["activations"] == plan["activations"] // 2


def test_dry_run_prints_the_config_and_the_plan(capsys):
    assert main(["train", "--preset", "tiny", "--num-classes", "9", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["preset"] == "tiny"
    assert "memory plan per device" in err and "AdamW moments (fp32)" in err and "with --gradient-checkpointing" in err


def test_the_plan_counts_lora_adapters_and_the_ema_and_optimizer_choices(tmp_path):
    import torch
    from diffusers import UNet2DConditionModel

    root = sdxl_configs(tmp_path)
    cfg = resolve(overrides={"preset": "sdxl", "pretrained": str(root), "data": "x", "batch_size": 1, "lora_rank": 16})
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
    projections = [m for n, m in unet.named_modules() if n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))]
    adapters = sum(16 * (m.in_features + m.out_features) for m in projections)  # A (r x in) and B (out x r)
    plan = memory_plan(cfg)
    assert plan["adapter_parameters"] == plan["trainable_parameters"] == adapters == 23_224_320
    rows = plan["rows"]
    assert rows["weights (fp32)"] == 4 * (2_567_463_684 + adapters)
    assert rows["gradients (fp32)"] == rows["EMA (fp32)"] == 4 * adapters and rows["AdamW moments (fp32)"] == 8 * adapters
    mlp = unet.add_embedding.linear_1.weight.numel() + unet.add_embedding.linear_1.bias.numel() + unet.add_embedding.linear_2.weight.numel() + 1280
    assert memory_plan(replace(cfg, lora_add_embedding=True))["trainable_parameters"] == adapters + mlp
    lean = memory_plan(replace(cfg, lora_rank=0, optimizer="adamw8bit", ema="cpu"))
    assert lean["rows"]["AdamW moments (8-bit)"] == 2 * 2_567_463_684 and lean["rows"]["EMA (fp32, on the CPU)"] == 0
    assert lean["ema_host_bytes"] == 4 * 2_567_463_684


def test_the_lora_plan_matches_the_denoiser_it_builds(tmp_path):
    from test_sdxl import write_tiny_sdxl

    from microcond.model import build_denoiser

    tiny = write_tiny_sdxl(tmp_path / "sdxl")
    cfg = resolve(overrides={"preset": "sdxl", "pretrained": str(tiny), "data": "x", "resolution": 64, "lora_rank": 4, "lora_add_embedding": True})
    model = build_denoiser(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert memory_plan(cfg)["trainable_parameters"] == trainable > 0
    assert trainable < sum(p.numel() for p in model.parameters()) // 2


def test_the_readme_table_is_the_plans(tmp_path):
    """Each cell of the README's "what fits" table is what largest_batch computes for its config."""
    import re

    from microcond.train.memory import CARDS, largest_batch

    base = resolve(overrides={"preset": "sdxl", "pretrained": str(sdxl_configs(tmp_path)), "data": "x", "batch_size": 1, "text_cache": True})
    columns = [base, replace(base, optimizer="adamw8bit", ema="cpu"), replace(base, lora_rank=16)]
    plans = [memory_plan(cfg) for cfg in columns]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for card, capacity in CARDS.items():
        row = re.search(rf"^\| {card} \|(.*)\|$", readme, re.M).group(1).split("|")
        for cell, plan in zip(row, plans):
            plain, checkpointed = largest_batch(plan, capacity, False), largest_batch(plan, capacity, True)
            expected = f"batch {plain}, or {checkpointed} checkpointed" if plain else ("no" if not checkpointed else f"{checkpointed} checkpointed")
            assert cell.strip().startswith(expected), (card, cell, expected)
