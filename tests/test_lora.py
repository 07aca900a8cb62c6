"""LoRA fine-tuning of a tiny random SDXL: what checkpoints hold, exact resume, and the exported
LoRA file read by diffusers' own loader (``StableDiffusionXLPipeline.load_lora_weights``).

Oracles: the stock pipeline with the LoRA file loaded against (a) our model with the adapters
merged into the weights and exported as a pipeline, (b) the UNet of our own sampler.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_sdxl import tiny  # noqa: F401  (the module-scoped tiny random SDXL folder fixture)

from microcond.cli.main import main

FLAGS = ["--preset", "sdxl", "--resolution", "64", "--buckets", "64x64", "--batch-size", "2", "--precision", "fp32", "--lr", "1e-2",
         "--sample-every", "0", "--checkpoint-every", "1", "--no-progress", "--lora-rank", "4", "--lora-alpha", "8"]
PROMPT = "picture number 3"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (64 + 8 * (i % 3), 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file": f"{i}.png", "caption": f"picture number {i}"}) + "\n" for i in range(8)))
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MICROCOND_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("MICROCOND_NO_REEXEC", "1")
        yield


def train(tiny: Path, images: Path, out: Path, steps: int, *extra: str) -> Path:
    assert main(["train", *FLAGS, "--pretrained", str(tiny), "--data", str(images), "--out", str(out), "--steps", str(steps), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def run(tiny, images, env, tmp_path_factory) -> Path:
    return train(tiny, images, tmp_path_factory.mktemp("runs") / "lora", 3, "--lora-add-embedding", "on")


def stock(tiny: Path, cls=None):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    pipe = (cls or StableDiffusionXLPipeline)(
        vae=AutoencoderKL.from_pretrained(tiny / "vae"), text_encoder=CLIPTextModel.from_pretrained(tiny / "text_encoder"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(tiny / "text_encoder_2"),
        tokenizer=CLIPTokenizer.from_pretrained(tiny / "tokenizer"), tokenizer_2=CLIPTokenizer.from_pretrained(tiny / "tokenizer_2"),
        unet=UNet2DConditionModel.from_pretrained(tiny / "unet"), scheduler=EulerDiscreteScheduler.from_pretrained(tiny / "scheduler"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe, **micro) -> np.ndarray:
    return pipe(PROMPT, height=64, width=64, num_inference_steps=3, guidance_scale=3.0, output_type="np",
                generator=torch.Generator().manual_seed(0), **micro).images[0]


def test_checkpoints_hold_only_the_trained_tensors(tiny, run):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny / "unet")
    projections = [n for n, _ in unet.named_modules() if n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))]
    model = load_file(str(run / "checkpoints" / "step-00000003" / "model.safetensors"))
    ema = load_file(str(run / "checkpoints" / "step-00000003" / "ema.safetensors"))
    assert set(model) == set(ema)
    adapters = [k for k in model if ".lora_A." in k or ".lora_B." in k]
    assert len(adapters) == 2 * len(projections) == 2 * 4 * 2 * 4  # A and B x 4 projections x (self, cross) x 4 transformer blocks
    assert sorted(set(model) - set(adapters)) == [f"unet.add_embedding.{n}.{p}" for n in ("linear_1", "linear_2") for p in ("bias", "weight")]
    assert not any("base_layer" in k for k in model)  # no frozen weight is written
    trained = next(k for k in adapters if ".lora_B." in k)
    assert model[trained].abs().max() > 0  # B starts at zero: it trained


def test_resume_is_exact(tiny, images, env, tmp_path, run):
    resumed = train(tiny, images, tmp_path / "resumed", 2, "--lora-add-embedding", "on")
    train(tiny, images, resumed, 3, "--lora-add-embedding", "on")
    for stem in ("model", "ema", "optimizer"):
        a = load_file(str(run / "checkpoints" / "step-00000003" / f"{stem}.safetensors"))
        b = load_file(str(resumed / "checkpoints" / "step-00000003" / f"{stem}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stem


def test_lora_file_loads_in_the_stock_pipeline_and_matches_the_merged_export(tiny, run, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from microcond.sample.pipeline import MicroCondXLPipeline
    from microcond.sample.run import load_run

    assert main(["export", str(run), "--lora", str(tmp_path / "lora.safetensors")]) == 0
    pipe = stock(tiny)
    before = image(pipe)
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"))
    with_lora = image(pipe)
    assert np.abs(with_lora - before).max() > 1e-3  # the adapters reach the images

    # (a) the adapters merged into the weights by us, exported as a pipeline and read back whole
    for part in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (tiny / part).is_dir()
    assert main(["export", str(run), "--pipeline", str(tmp_path / "merged")]) == 0
    merged = StableDiffusionXLPipeline.from_pretrained(tmp_path / "merged", local_files_only=True)
    merged.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(image(merged), with_lora, atol=2e-4)

    # (b) the UNet our sampler runs (EMA, adapters live), on the same inputs as the loaded pipeline's
    model, *_ = load_run(run)
    g = torch.Generator().manual_seed(1)
    x, context, pooled = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 64, generator=g), torch.randn(2, 32, generator=g)
    ids = torch.tensor([[64, 64, 0, 0, 64, 64], [32, 48, 8, 4, 64, 64]], dtype=torch.float32)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        ours = model(x, t, model.embedder.select(ids.long()), torch.zeros(2, 3), None, context=context, pooled=pooled)
        theirs = pipe.unet(x, t, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

    # Our pipeline loads the same file (it is a StableDiffusionXLPipeline), and so does the probe.
    ours_pipe = stock(tiny, MicroCondXLPipeline)
    ours_pipe.load_lora_weights(str(tmp_path / "lora.safetensors"))
    np.testing.assert_allclose(image(ours_pipe), with_lora, atol=1e-5)
    stock(tiny).save_pretrained(tmp_path / "base")
    probe = ["--resolution", "64", "--steps", "2", "--n-prompts", "1", "--seeds", "0", "--sizes", "0.5", "1", "--crops", "0,0", "0,0.25",
             "--device", "cpu", "--no-progress"]
    assert main(["probe", str(tmp_path / "base"), "--out", str(tmp_path / "p0"), *probe]) == 0
    assert main(["probe", str(tmp_path / "base"), "--lora", str(tmp_path / "lora.safetensors"), "--out", str(tmp_path / "p1"), *probe]) == 0
    plain, adapted = (json.loads((tmp_path / p / "probe.json").read_text()) for p in ("p0", "p1"))
    assert adapted["settings"]["lora"].endswith("lora.safetensors") and json.dumps(adapted["size_sweep"]) != json.dumps(plain["size_sweep"])


def test_sample_a_lora_run_and_refusals(tiny, images, env, run, tmp_path, capsys):
    assert main(["sample", str(run), "--prompt", PROMPT, "--n", "1", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    assert np.asarray(Image.open(tmp_path / "s" / "seed-000000.png")).std() > 0
    capsys.readouterr()
    assert main(["train", "--preset", "tiny", "--lora-rank", "4", "--data", str(images), "--out", str(tmp_path / "x")]) == 2
    assert "lora_rank" in capsys.readouterr().err
    assert main(["export", str(run), "--lora", str(tmp_path / "lora.bin")]) == 2
    assert ".safetensors" in capsys.readouterr().err


def test_gradient_checkpointing_still_trains_the_adapters(tiny, images, env, tmp_path):
    """The frozen UNet's checkpointed blocks take inputs that need no gradient: the adapters inside
    must get theirs anyway (a reentrant checkpoint would silently leave them at zero)."""
    plain = train(tiny, images, tmp_path / "plain", 2)
    checkpointed = train(tiny, images, tmp_path / "checkpointed", 2, "--gradient-checkpointing", "on")
    a = load_file(str(plain / "checkpoints" / "step-00000002" / "model.safetensors"))
    b = load_file(str(checkpointed / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert all(b[k].abs().max() > 0 for k in b if ".lora_B." in k)
