"""A training run as a folder that ``StableDiffusionXLPipeline.from_pretrained`` loads."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from microcond.sdxl.folders import TEXT_PARTS, require_folder


def export_pipeline(run_dir: str | Path, out_dir: str | Path, ema: bool = True) -> Path:
    """Write a ``StableDiffusionXLPipeline.from_pretrained`` folder: the run's UNet, its VAE and text encoders.

    The VAE and text encoder folders are hard-linked where the file system allows (else copied);
    the scheduler is SDXL's Euler with the run's betas and prediction type. Written into a fresh
    folder first (see :func:`microcond.sample.run.export_folder`): never into a folder it reads from.
    """
    from microcond.sample.run import export_folder, run_config

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = run_config(run_dir)
    if not (cfg.vae and cfg.text_encoders):
        raise ValueError(f"{run_dir} was not trained with --vae and --text-encoders; export its UNet alone with --diffusers DIR")
    vae = require_folder(cfg.vae, "--vae", "the run's AutoencoderKL")
    text = require_folder(cfg.text_encoders, "--text-encoders", ", ".join(TEXT_PARTS))
    with export_folder(run_dir, out_dir, "--pipeline", "unet/microcond.json") as staging:
        _write_pipeline(run_dir, staging, vae, text, ema)
    return out_dir


def _write_pipeline(run_dir: Path, out_dir: Path, vae: Path, text: Path, ema: bool) -> None:
    """The body of :func:`export_pipeline`, written straight into the new folder ``out_dir``."""
    import diffusers
    from diffusers import EulerDiscreteScheduler

    from microcond.sample.run import write_unet

    write_unet(run_dir, out_dir / "unet", ema=ema)
    copies = {"vae": vae, **{part: text / part for part in TEXT_PARTS}}
    for part, source in copies.items():
        shutil.copytree(source, out_dir / part, copy_function=_link_or_copy)
    scheduler_config = json.loads((run_dir / "scheduler_config.json").read_text())
    EulerDiscreteScheduler(num_train_timesteps=scheduler_config["num_train_timesteps"], beta_start=scheduler_config["beta_start"],
                           beta_end=scheduler_config["beta_end"], beta_schedule=scheduler_config["beta_schedule"],
                           prediction_type=scheduler_config["prediction_type"], timestep_spacing="leading",
                           steps_offset=1).save_pretrained(out_dir / "scheduler")  # SDXL base's inference scheduler
    index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": diffusers.__version__, "force_zeros_for_empty_prompt": True,
             "feature_extractor": [None, None], "image_encoder": [None, None],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
