"""The sdxl preset on an NVIDIA GPU: full and LoRA fine-tuning of random SDXL-architecture UNets
(bf16, gradient checkpointing off and on), a resume, the exports and a probe, with each case's
measured peak GPU memory and images/s beside the memory plan (`train --dry-run`) of the same config.

    bash scripts/gpu-check.sh                   # tiny (64 px) and mid (256 px) models, 20 steps each
    python benchmarks/gpu_check.py --sizes mid --steps 40 --batch 8

Writes OUT/gpu-check.json and prints a table. Everything it trains is random: no download, no
real checkpoint. ``--allow-cpu`` runs it without a GPU (a smoke test: no peak memory to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("MICROCOND_NO_REEXEC", "1")  # train in this process: its GPU peak is ours to read

from test_sdxl import write_tiny_sdxl  # noqa: E402  (the tests' random SDXL layout: text encoders, VAE, tokenizers)

from microcond.cli.main import main  # noqa: E402
from microcond.train.config import resolve  # noqa: E402
from microcond.train.memory import memory_plan  # noqa: E402

# name -> (resolution, UNet config overrides): "mid" has SDXL's block layout at a fifth of its width.
SIZES = {
    "tiny": (64, {}),
    "mid": (256, dict(block_out_channels=(128, 256, 512), layers_per_block=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4, 8),
                      transformer_layers_per_block=(1, 2, 4))),
}
# LoRA also runs the GPU-saving options: the EMA in host memory, 8-bit AdamW, and sample grids (the EMA swapped in).
MODES = {"full": {}, "lora": {"lora_rank": 8, "lora_add_embedding": True, "ema": "cpu", "optimizer": "adamw8bit"}}
GIB = 2**30


def write_model(folder: Path, size: str) -> Path:
    """A random SDXL-layout pipeline folder (model_index.json and its parts) whose UNet has the ``size`` layout."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    write_tiny_sdxl(folder)
    overrides = SIZES[size][1]
    if overrides:
        config = {**UNet2DConditionModel.load_config(folder / "unet"), **overrides}
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        UNet2DConditionModel.from_config(config).save_pretrained(folder / "unet")
    kinds = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection,
             "tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer, "scheduler": EulerDiscreteScheduler}
    StableDiffusionXLPipeline(**{name: kind.from_pretrained(folder / name) for name, kind in kinds.items()}).save_pretrained(folder)
    return folder


def write_images(folder: Path, n: int = 32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (288, 320, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file": f"{i:03d}.png", "caption": f"picture {i}"}) + "\n" for i in range(n)))
    return folder


def check(code: int, what: str) -> None:
    if code != 0:
        raise SystemExit(f"gpu-check: {what} failed (exit {code})")


def train_case(model: Path, images: Path, run: Path, resolution: int, mode: str, checkpointing: bool, steps: int, batch: int, precision: str) -> dict:
    flags = ["--preset", "sdxl", "--pretrained", str(model), "--data", str(images), "--out", str(run), "--resolution", str(resolution),
             "--buckets", f"{resolution}x{resolution}", "--batch-size", str(batch), "--steps", str(steps), "--precision", precision,
             "--text-cache", "on", "--log-every", "5", "--sample-every", str(steps) if mode == "lora" else "0", "--checkpoint-every", str(steps), "--lr", "1e-4",
             "--gradient-checkpointing", "on" if checkpointing else "off", "--no-progress"]
    for key, value in MODES[mode].items():
        flags += ["--" + key.replace("_", "-"), ("on" if value else "off") if isinstance(value, bool) else str(value)]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    check(main(["train", *flags]), f"training {run.name}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    cfg = resolve(overrides={"preset": "sdxl", "pretrained": str(model), "data": str(images), "resolution": resolution, "batch_size": batch,
                             "text_cache": True, "gradient_checkpointing": checkpointing,
                             **MODES[mode]})
    plan = memory_plan(cfg)
    return {"case": run.name, "steps": steps, "batch": batch, "resolution": resolution, "wall_s": time.perf_counter() - start,
            "images_per_s": statistics.median(r["images_per_s"] for r in rows[1:] or rows),
            "gpu_peak_gib": max(r.get("gpu_peak_bytes", 0) for r in rows) / GIB if torch.cuda.is_available() else None,
            "plan_gib": plan["total_checkpointed" if checkpointing else "total_plain"] / GIB,
            "plan_fixed_gib": (plan["total_plain"] - plan["activations"]) / GIB, "trainable_parameters": plan["trainable_parameters"],
            "flags": flags}


def main_check(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["tiny", "mid"])
    p.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["full", "lora"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a smoke test of this script)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu-check: no CUDA GPU visible (nvidia-smi and torch.cuda.is_available()); nothing measured. --allow-cpu runs it anyway.", file=sys.stderr)
        return 1
    os.environ.setdefault("MICROCOND_CACHE", str(args.out / "cache"))
    precision = "bf16" if torch.cuda.is_available() else "auto"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    images = write_images(args.out / "images")
    results: dict = {"device": device, "torch": torch.__version__, "cases": [], "checks": {}}
    for size in args.sizes:
        model = write_model(args.out / f"model-{size}", size)
        resolution = SIZES[size][0]
        for mode in args.modes:
            for checkpointing in (False, True):
                run = args.out / "runs" / f"{size}-{mode}-{'ckpt' if checkpointing else 'plain'}"
                results["cases"].append(train_case(model, images, run, resolution, mode, checkpointing, args.steps, args.batch, precision))
            # Resume: the same command with more steps continues from the checkpoint.
            flags = results["cases"][-1]["flags"]
            resumed = flags[: flags.index("--steps") + 1] + [str(args.steps + 5)] + flags[flags.index("--steps") + 2:]
            check(main(["train", *resumed]), f"resuming {run.name}")
            last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
            results["checks"][f"{run.name} resumed to step"] = last
            probe = ["--resolution", str(resolution), "--steps", "4", "--n-prompts", "2", "--seeds", "0", "--no-progress",
                     "--device", "cuda" if torch.cuda.is_available() else "cpu"]
            if mode == "full":
                check(main(["export", str(run), "--pipeline", str(args.out / f"export-{run.name}")]), "export --pipeline")
                check(main(["probe", str(args.out / f"export-{run.name}"), "--out", str(args.out / f"probe-{run.name}"), *probe]), "probe")
            else:
                lora = args.out / f"{run.name}.safetensors"
                check(main(["export", str(run), "--lora", str(lora)]), "export --lora")
                check(main(["probe", str(model), "--lora", str(lora), "--out", str(args.out / f"probe-{run.name}"), *probe]),
                      "probe --lora")
            results["checks"][f"{run.name} exported and probed"] = True
    (args.out / "gpu-check.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\ngpu-check on {device}, torch {torch.__version__}, {args.steps} steps of batch {args.batch}, {precision}")
    print(f"{'case':<22} {'images/s':>9} {'peak GiB':>9} {'plan GiB':>9} {'plan fixed':>11} {'trainable':>12}")
    for c in results["cases"]:
        peak = f"{c['gpu_peak_gib']:.2f}" if c["gpu_peak_gib"] is not None else "-"
        print(f"{c['case']:<22} {c['images_per_s']:>9.2f} {peak:>9} {c['plan_gib']:>9.2f} {c['plan_fixed_gib']:>11.2f} {c['trainable_parameters']:>12,}")
    for name, value in results["checks"].items():
        print(f"{name}: {value}")
    print(f"wrote {args.out / 'gpu-check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main_check())
