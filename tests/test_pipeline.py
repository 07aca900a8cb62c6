"""MicroCondXLPipeline against diffusers' StableDiffusionXLPipeline on a tiny random SDXL.

Each of the stock pipeline's four micro-conditioning bugs is shown in the stock pipeline and
not in ours; where the stock pipeline has no bug the two agree. Two Euler steps, 64x64 images
(8x8 latents); the UNet's input is read with forward hooks.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.callbacks import SDXLCFGCutoffCallback
from test_sdxl import write_tiny_sdxl

from microcond.cond.embedder import fourier_features
from microcond.sample.pipeline import MicroCondXLPipeline, micro_conditions

PROMPT = "a red cube on a table"
POOLED = 32  # the tiny text encoders' pooled width; the micro-condition features follow it
# Every negative field given, none equal to the positive one (64x64 output, crop (0, 0)).
NEGATIVES = dict(negative_original_size=(16, 16), negative_crops_coords_top_left=(24, 8), negative_target_size=(32, 48))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A stock-layout SDXL folder (model_index.json and all parts) with tiny random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = write_tiny_sdxl(tmp_path_factory.mktemp("sdxl"))
    kinds = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection,
             "tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer, "scheduler": EulerDiscreteScheduler}
    StableDiffusionXLPipeline(**{name: kind.from_pretrained(folder / name) for name, kind in kinds.items()}).save_pretrained(folder)
    return folder


def load(cls: type, folder: Path, dtype: torch.dtype = torch.float32) -> StableDiffusionXLPipeline:
    pipe = cls.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def stock(folder) -> StableDiffusionXLPipeline:
    return load(StableDiffusionXLPipeline, folder)


@pytest.fixture(scope="module")
def ours(folder) -> MicroCondXLPipeline:
    return load(MicroCondXLPipeline, folder)


def draw(pipe: StableDiffusionXLPipeline, prompt: str | list[str], seeds: list[int], **kw) -> torch.Tensor:
    """Latents after two steps; image i starts from the noise of seed ``seeds[i]``."""
    kw = {"num_inference_steps": 2, "output_type": "latent", **kw}
    return pipe(prompt, generator=[torch.Generator().manual_seed(s) for s in seeds], **kw).images


@contextmanager
def unet_inputs(pipe: StableDiffusionXLPipeline) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Per UNet call: the time_ids and prompt embeddings it got, and its add_embedding input (pooled + micro features)."""
    seen: dict[str, list[torch.Tensor]] = {"time_ids": [], "context": [], "add_embeds": []}

    def call(module, args, kwargs):
        seen["time_ids"].append(kwargs["added_cond_kwargs"]["time_ids"].clone())
        seen["context"].append(kwargs["encoder_hidden_states"].clone())

    def add_embedding(module, args):
        seen["add_embeds"].append(args[0].clone())

    handles = [pipe.unet.register_forward_pre_hook(call, with_kwargs=True), pipe.unet.add_embedding.register_forward_pre_hook(add_embedding)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def ids_of(original_size, crop, target_size) -> list[float]:
    return [float(v) for v in (*original_size, *crop, *target_size)]


POSITIVE_IDS = ids_of((64, 64), (0, 0), (64, 64))
NEGATIVE_IDS = ids_of((16, 16), (24, 8), (32, 48))


# ------------------------------------------------------------------------- where stock is right


@pytest.mark.parametrize("setting", [
    dict(),
    dict(**NEGATIVES),
    dict(guidance_scale=1.0),
    dict(prompt=[PROMPT, "a blue ball"], seeds=[0, 1]),  # no negatives: the rows cannot mis-pair
    dict(original_size=(1023, 517), crops_coords_top_left=(40, 0), guidance_rescale=0.7, **NEGATIVES),
    dict(callback_on_step_end=SDXLCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=0), **NEGATIVES),  # guidance off after step 0
    dict(num_inference_steps=4, denoising_end=0.5),
], ids=["defaults", "all-negatives", "no-guidance", "two-prompts-no-negatives", "odd-ids-rescale", "cfg-cutoff", "denoising-end"])
def test_agrees_with_stock_where_stock_has_no_bug(stock, ours, setting):
    setting = {"prompt": PROMPT, "seeds": [0], **setting}
    prompt, seeds = setting.pop("prompt"), setting.pop("seeds")
    theirs = draw(stock, prompt, seeds, output_type="np", **setting)
    mine = draw(ours, prompt, seeds, output_type="np", **setting)
    assert theirs.shape == mine.shape == (len(seeds), 64, 64, 3)
    np.testing.assert_allclose(mine, theirs, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------- bug 1: pairing


def test_each_image_is_paired_with_its_own_rows_for_any_batch(stock, ours):
    """2 prompts x 2 images with negatives: image (p, k) equals the same prompt and seed drawn alone."""
    prompts, seeds = [PROMPT, "a blue ball"], [0, 1, 2, 3]  # images ordered p0k0, p0k1, p1k0, p1k1
    with unet_inputs(stock) as seen_stock:
        batch_stock = draw(stock, prompts, seeds, num_images_per_prompt=2, **NEGATIVES)
    with unet_inputs(ours) as seen_ours:
        batch_ours = draw(ours, prompts, seeds, num_images_per_prompt=2, **NEGATIVES)
    # Latents and prompts are [uncond x 4, cond x 4]; stock's ids alternate, ours follow them.
    assert seen_stock["time_ids"][0].tolist() == [NEGATIVE_IDS, POSITIVE_IDS] * 4
    assert seen_ours["time_ids"][0].tolist() == [NEGATIVE_IDS] * 4 + [POSITIVE_IDS] * 4
    for image, (prompt, seed) in enumerate(zip([prompts[0]] * 2 + [prompts[1]] * 2, seeds)):
        alone_stock = draw(stock, prompt, [seed], **NEGATIVES)[0]
        alone_ours = draw(ours, prompt, [seed], **NEGATIVES)[0]
        torch.testing.assert_close(alone_ours, alone_stock, atol=1e-6, rtol=0)  # one image: no bug
        torch.testing.assert_close(batch_ours[image], alone_ours, atol=1e-4, rtol=0)
        # Stock gives images 0 and 2 the negative ids in their conditional row, 1 and 3 the
        # positive ids in their unconditional row.
        assert (batch_stock[image] - alone_stock).abs().max() > 0.05, image


def test_micro_conditions_may_differ_per_prompt(ours):
    sizes = [(16, 16), (256, 256)]
    both = draw(ours, [PROMPT, PROMPT], [0, 0], original_size=sizes, negative_micro_condition="null")
    for image, size in enumerate(sizes):
        torch.testing.assert_close(both[image], draw(ours, PROMPT, [0], original_size=size, negative_micro_condition="null")[0], atol=1e-4, rtol=0)
    assert (both[0] - both[1]).abs().max() > 0.05
    with pytest.raises(ValueError, match="one pair per prompt \\(2\\), got 3 pairs"):
        draw(ours, [PROMPT, PROMPT], [0, 0], original_size=[(16, 16)] * 3)


# ------------------------------------------------------------------------- bug 2: lone negatives


@pytest.mark.parametrize("field,value", [("negative_original_size", (16, 16)), ("negative_crops_coords_top_left", (24, 8))])
def test_a_negative_field_counts_alone(stock, ours, field, value):
    base_stock, base_ours = draw(stock, PROMPT, [0]), draw(ours, PROMPT, [0])
    assert torch.equal(draw(stock, PROMPT, [0], **{field: value}), base_stock)  # silently ignored
    with unet_inputs(ours) as seen:
        alone = draw(ours, PROMPT, [0], **{field: value})
    assert (alone - base_ours).abs().max() > 0.05
    # The other negative fields are the positive ones: what stock gives when told all three.
    spelled_out = {"negative_original_size": (64, 64), "negative_crops_coords_top_left": (0, 0), "negative_target_size": (64, 64), field: value}
    torch.testing.assert_close(alone, draw(stock, PROMPT, [0], **spelled_out), atol=1e-6, rtol=0)
    assert seen["time_ids"][0][0].tolist() == ids_of(*(spelled_out[k] for k in ("negative_original_size", "negative_crops_coords_top_left", "negative_target_size")))


def test_missing_negative_fields_default_to_the_positive_ones():
    positive, negative = micro_conditions((64, 96), original_size=[(512, 512), (300, 200)], crops_coords_top_left=(8, 0),
                                          negative_target_size=(32, 32), batch_size=2, num_images_per_prompt=2)
    assert [c.ids for c in positive] == [(512, 512, 8, 0, 64, 96)] * 2 + [(300, 200, 8, 0, 64, 96)] * 2
    assert [c.ids for c in negative] == [(512, 512, 8, 0, 32, 32)] * 2 + [(300, 200, 8, 0, 32, 32)] * 2
    assert micro_conditions((64, 64))[1] is None
    with pytest.raises(ValueError, match="negative micro-conditions: MicroCond.crop_top_left must be non-negative"):
        micro_conditions((64, 64), negative_crops_coords_top_left=(-8, 0))


# ------------------------------------------------------------------------- bug 3: precision


def test_ids_stay_exact_in_bf16(folder):
    """bf16 pipelines: stock rounds the ids before embedding them, ours embeds the exact ids."""
    exact = ids_of((1023, 1500), (3001, 517), (64, 64))
    rounded = [1024.0, 1504.0, 3008.0, 516.0, 64.0, 64.0]  # bf16 keeps 8 significant bits
    micro = dict(original_size=(1023, 1500), crops_coords_top_left=(3001, 517), target_size=(64, 64), guidance_scale=1.0)
    results = {}
    for cls, ids in ((StableDiffusionXLPipeline, rounded), (MicroCondXLPipeline, exact)):
        pipe = load(cls, folder, torch.bfloat16)
        with unet_inputs(pipe) as seen:
            results[cls] = draw(pipe, PROMPT, [0], **micro)
        assert seen["time_ids"][0].tolist() == [ids]
        features = seen["add_embeds"][0][:, POOLED:]  # (1, 6 * 256), cast to bf16 by the UNet only here
        assert features.dtype == torch.bfloat16
        assert torch.equal(features, fourier_features(torch.tensor([ids])).flatten(1).to(torch.bfloat16))
    assert (fourier_features(torch.tensor(rounded)) - fourier_features(torch.tensor(exact))).abs().max() > 1.0
    assert (results[StableDiffusionXLPipeline].float() - results[MicroCondXLPipeline].float()).abs().max() > 0.05


# ------------------------------------------------------------------------- bug 4: the null condition


def test_null_micro_condition_is_the_zero_embedding(stock, ours):
    # Stock cannot express it: every id's features have squared norm dim / 2 = 128, never 0.
    norms = stock.unet.add_time_proj(torch.arange(0, 5000, 7, dtype=torch.float32)).pow(2).sum(-1)  # (715,)
    torch.testing.assert_close(norms, torch.full_like(norms, 128.0), atol=1e-3, rtol=0)
    base = draw(ours, PROMPT, [0], original_size=(1024, 1024))
    with unet_inputs(ours) as seen:
        null = draw(ours, PROMPT, [0], original_size=(1024, 1024), negative_micro_condition="null")
    add_embeds, context = seen["add_embeds"][0], seen["context"][0]  # rows: [uncond, cond]
    assert torch.equal(add_embeds[0, POOLED:], torch.zeros(6 * 256))
    ids = torch.tensor([ids_of((1024, 1024), (0, 0), (64, 64))])
    assert torch.equal(add_embeds[1, POOLED:], fourier_features(ids).flatten())
    assert not torch.equal(context[0], context[1])  # the text keeps its own negative (zeros for "")
    assert (null - base).abs().max() > 0.05
    with pytest.raises(ValueError, match="either negative_micro_condition='null' or negative micro-condition"):
        draw(ours, PROMPT, [0], negative_micro_condition="null", negative_original_size=(16, 16))
    with pytest.raises(ValueError, match="must be None or 'null', got 'zero'"):
        draw(ours, PROMPT, [0], negative_micro_condition="zero")


# ------------------------------------------------------------------------- micro-condition guidance


def test_micro_guidance_runs_a_third_branch_and_reduces_to_plain_guidance(ours):
    with unet_inputs(ours) as seen:
        guided = draw(ours, PROMPT, [0], guidance_scale=5.0, micro_condition_guidance_scale=5.0, **NEGATIVES)
    # Rows: [negative prompt + negative ids, prompt + negative ids, prompt + ids].
    assert seen["time_ids"][0].tolist() == [NEGATIVE_IDS, NEGATIVE_IDS, POSITIVE_IDS]
    context = seen["context"][0]
    assert torch.equal(context[1], context[2]) and not torch.equal(context[0], context[1])
    plain = draw(ours, PROMPT, [0], guidance_scale=5.0, **NEGATIVES)
    torch.testing.assert_close(guided, plain, atol=1e-4, rtol=0)  # equal scales telescope
    stronger = draw(ours, PROMPT, [0], guidance_scale=5.0, micro_condition_guidance_scale=9.0, **NEGATIVES)
    assert (stronger - plain).abs().max() > 0.05
    # Text guidance off: two branches, and micro scale 1 is the plain conditional prediction.
    with unet_inputs(ours) as seen:
        micro_only = draw(ours, PROMPT, [0], guidance_scale=1.0, micro_condition_guidance_scale=1.0, negative_micro_condition="null")
    assert seen["time_ids"][0].shape == (2, 6) and torch.equal(seen["add_embeds"][0][0, POOLED:], torch.zeros(6 * 256))
    torch.testing.assert_close(micro_only, draw(ours, PROMPT, [0], guidance_scale=1.0), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="needs micro-conditions to guide away from"):
        draw(ours, PROMPT, [0], micro_condition_guidance_scale=3.0)


# ------------------------------------------------------------------------- plumbing


def test_the_unet_is_left_as_loaded(ours):
    def stop(pipe, step, timestep, tensors):
        raise RuntimeError("stopped by the callback")

    with pytest.raises(RuntimeError, match="stopped by the callback"):
        draw(ours, PROMPT, [0], callback_on_step_end=stop)
    assert not ours.unet.add_time_proj._forward_hooks  # the embedding hook is gone, also after an error
    assert type(ours.unet).__name__ == "UNet2DConditionModel"
    with pytest.raises(ValueError, match="takes no \\['callback'\\]; for per-step callbacks use callback_on_step_end"):
        draw(ours, PROMPT, [0], callback=print)
