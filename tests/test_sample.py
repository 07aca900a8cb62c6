"""Samplers, guidance pairing, batch independence and sweeps, with an exact analytic denoiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from microcond import MicroCond
from microcond.sample.grid import save_grid, save_images
from microcond.sample.samplers import (
    Cond,
    crop_sweep,
    make_cond,
    original_size_sweep,
    sample,
    sweep,
    uncond_for,
)

SHAPE = (3, 8, 8)
DATA_STD = 0.5
TARGET = (32, 32)


class GaussianDenoiser:
    """Exact model output when every pixel of the data is N(mu(cond), DATA_STD^2), independently.

    mu depends on the class label and on the original-size id, so guidance and micro-conditions
    change the result. Each call's conditions are recorded for pairing checks.
    """

    def __init__(self, config: dict | None = None) -> None:
        scheduler = DDPMScheduler.from_config(config or {})
        self.alphas_cumprod = scheduler.alphas_cumprod.double()  # (1000,)
        self.prediction_type = scheduler.config.prediction_type
        self.calls: list[Cond] = []

    @staticmethod
    def mean(cond: Cond) -> torch.Tensor:
        label_term = torch.where(cond.labels >= 0, 0.2 + 0.1 * cond.labels, 0.0)
        size_term = torch.where(cond.drop[:, 0], 0.0, cond.ids[:, 0] / 256.0)
        return (label_term + size_term).double()  # (B,)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        assert x.dtype == torch.float32 and t.dtype == torch.int64 and len(cond) == len(x)
        self.calls.append(cond)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        mu = self.mean(cond).view(-1, 1, 1, 1)
        x = x.double()
        x0 = mu + a.sqrt() * DATA_STD**2 / (a * DATA_STD**2 + 1 - a) * (x - a.sqrt() * mu)  # E[x0 | x_t]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        out = eps if self.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
        return out.float()


def micro(original: int) -> MicroCond:
    return MicroCond((original, original), (0, 0), TARGET)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sampler_recovers_data_distribution(scheduler: str, prediction_type: str) -> None:
    config = {"prediction_type": prediction_type, "clip_sample": False}
    denoise = GaussianDenoiser(config)
    cond = make_cond(micro(32), labels=1, n=24)  # mu = 0.3 + 32/256 = 0.425
    images = sample(denoise, cond, shape=SHAPE, seeds=range(24), scheduler=scheduler, steps=50,
                    scheduler_config=config, clamp=False, progress=False)
    assert images.shape == (24, *SHAPE)
    assert images.mean().item() == pytest.approx(0.425, abs=0.02)
    # 50 first-order steps shrink the spread a little (0.47 here; 0.49 with 200 steps).
    assert images.std().item() == pytest.approx(DATA_STD, rel=0.1)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_sample_alone_equals_sample_in_larger_batch(scheduler: str) -> None:
    denoise = GaussianDenoiser()
    conds = make_cond([micro(s) for s in (8, 16, 32, 64, 128)], labels=[0, 1, 2, 0, 1])
    uncond = uncond_for(conds, null_micro=True)
    kwargs = dict(shape=SHAPE, scheduler=scheduler, steps=10, guidance=3.0, progress=False)
    batch = sample(denoise, conds, seeds=[7, 8, 9, 10, 11], uncond=uncond, batch_size=5, **kwargs)
    chunks = sample(denoise, conds, seeds=[7, 8, 9, 10, 11], uncond=uncond, batch_size=2, **kwargs)
    alone = sample(denoise, conds[2:3], seeds=[9], uncond=uncond[2:3], batch_size=1, **kwargs)
    torch.testing.assert_close(alone[0], batch[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(chunks, batch, rtol=0, atol=1e-6)
    # A different seed is a different image; the same seed elsewhere in the batch is the same one.
    assert (batch[0] - batch[1]).abs().max() > 0.1
    again = sample(denoise, make_cond(micro(32), 2, n=2), seeds=[9, 9], uncond=uncond_for(make_cond(micro(32), 2, n=2), null_micro=True), **kwargs)
    torch.testing.assert_close(again[0], again[1], rtol=0, atol=0)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_guidance_rows_pair_with_their_own_negative(batch_size: int) -> None:
    denoise = GaussianDenoiser()
    positive = make_cond([micro(128), micro(96), micro(64)], labels=[0, 1, 2])
    negatives = [micro(8), micro(16), micro(24)]
    uncond = uncond_for(positive, negative=negatives)
    images = sample(denoise, positive, shape=SHAPE, seeds=[1, 2, 3], guidance=4.0, uncond=uncond,
                    batch_size=batch_size, steps=5, progress=False)
    pairs = {128: 8, 96: 16, 64: 24}
    for call in denoise.calls:
        b = len(call) // 2
        assert len(call) == 2 * batch_size
        for i in range(b):
            pos_size, neg_size = int(call.ids[i, 0]), int(call.ids[b + i, 0])
            assert pairs[pos_size] == neg_size  # row i of the second half is row i's own negative
            assert call.labels[b + i] == -1 and call.labels[i] >= 0
    # Each image equals the same row guided alone with its own negative.
    for i in range(3):
        alone = sample(GaussianDenoiser(), positive[i : i + 1], shape=SHAPE, seeds=[i + 1], guidance=4.0,
                       uncond=uncond[i : i + 1], steps=5, progress=False)
        torch.testing.assert_close(alone[0], images[i], rtol=0, atol=1e-6)


def test_guidance_zero_is_the_unconditional_sample_and_default_partner_is_null_class() -> None:
    denoise = GaussianDenoiser()
    cond = make_cond(micro(64), labels=2, n=2)
    uncond = uncond_for(cond, negative=micro(8))
    kwargs = dict(shape=SHAPE, seeds=[4, 5], steps=8, progress=False)
    torch.testing.assert_close(sample(denoise, cond, guidance=0.0, uncond=uncond, **kwargs),
                               sample(denoise, uncond, **kwargs), rtol=0, atol=1e-6)
    default = uncond_for(cond)
    assert torch.equal(default.ids, cond.ids) and (default.labels == -1).all() and not default.drop.any()
    # Stronger class guidance moves the mean further from the null class (mu 0 + 64/256).
    weak = sample(denoise, cond, guidance=1.0, **kwargs).mean()
    strong = sample(denoise, cond, guidance=3.0, **kwargs).clamp(-1, 1).mean()
    assert strong > weak + 0.2


def test_micro_guidance_guides_the_micro_conditions_with_their_own_scale() -> None:
    from microcond.sample.samplers import guidance_partners

    cond = make_cond([micro(128), micro(64)], labels=[1, 2])
    kwargs = dict(shape=SHAPE, seeds=[3, 4], steps=6, progress=False)
    denoise = GaussianDenoiser()
    b = len(cond)
    # Unequal scales: three passes, [cond; uncond; micro_uncond], each row with its own partners.
    sample(denoise, cond, guidance=3.0, **guidance_partners(cond, 3.0, micro_guidance=5.0), **kwargs)
    assert denoise.calls
    for call in denoise.calls:
        assert len(call) == 3 * b
        assert (call.labels[b:2 * b] == -1).all() and call.drop[b:].all() and not call.drop[:b].any()
        assert torch.equal(call.labels[2 * b:], call.labels[:b])
    # Equal scales telescope to plain guidance against (null class, null micro-conditions): two
    # passes, and the same images as the three-branch sum computed by hand.
    denoise = GaussianDenoiser()
    both = sample(denoise, cond, guidance=3.0, **guidance_partners(cond, 3.0, micro_guidance=3.0), **kwargs)
    assert denoise.calls and all(len(call) == 2 * b for call in denoise.calls)
    plain = sample(GaussianDenoiser(), cond, guidance=3.0, uncond=uncond_for(cond, null_micro=True), **kwargs)
    torch.testing.assert_close(both, plain, rtol=0, atol=1e-6)
    by_hand = sample(GaussianDenoiser(), cond, guidance=3.0, **guidance_partners(cond, 3.0, micro_guidance=3.0 + 1e-9), **kwargs)
    torch.testing.assert_close(both, by_hand, rtol=0, atol=1e-5)
    # Text/class scale 1: only the micro-conditions are guided, against the same class.
    micro_only = sample(GaussianDenoiser(), cond, guidance=1.0, **guidance_partners(cond, 1.0, micro_guidance=4.0), **kwargs)
    expected = sample(GaussianDenoiser(), cond, guidance=4.0, uncond=uncond_for(cond, null_micro=True, keep_class=True), **kwargs)
    torch.testing.assert_close(micro_only, expected, rtol=0, atol=1e-5)
    # A larger micro scale moves the mean further along the size term (mu = label + size / 256).
    unclamped = dict(kwargs, clamp=False, scheduler_config={"clip_sample": False})
    weak = sample(GaussianDenoiser(), cond, guidance=3.0, **guidance_partners(cond, 3.0, micro_guidance=3.0), **unclamped)
    strong = sample(GaussianDenoiser(), cond, guidance=3.0, **guidance_partners(cond, 3.0, micro_guidance=6.0), **unclamped)
    assert strong.mean() > weak.mean() + 0.5 * 3 * (128 + 64) / 2 / 256  # half of the 3 x size term, at least
    with pytest.raises(ValueError, match="micro_uncond"):
        sample(GaussianDenoiser(), cond, guidance=3.0, micro_guidance=2.0, **kwargs)


def test_cond_helpers_and_errors() -> None:
    cond = make_cond([micro(8), micro(16)], labels=3)
    assert len(cond) == 2 and cond.ids.dtype == torch.int64 and cond.drop.shape == (2, 3)
    assert cond.ids[:, 0].tolist() == [8, 16] and cond.labels.tolist() == [3, 3]
    both = cond.cat(uncond_for(cond, null_micro=True, keep_class=True))
    assert len(both) == 4 and both.drop[2:].all() and not both.drop[:2].any() and both.labels.tolist() == [3] * 4
    with pytest.raises(ValueError, match="1 or 3 values"):
        make_cond([micro(8), micro(16)], labels=[1, 2, 3])
    with pytest.raises(ValueError, match="Cond.ids"):
        Cond(torch.zeros(2, 5, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="partner equal"):
        uncond_for(cond, keep_class=True)
    with pytest.raises(ValueError, match="one condition per sample"):
        sample(GaussianDenoiser(), cond, shape=SHAPE, seeds=[1, 2, 3], progress=False)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(GaussianDenoiser(), cond, shape=SHAPE, seeds=[1, 2], scheduler="plms", progress=False)
    with pytest.raises(ValueError, match="prediction_type"):
        sample(GaussianDenoiser(), cond, shape=SHAPE, seeds=[1, 2], scheduler_config={"prediction_type": "sample"}, progress=False)


def test_sweep_rows_are_seeds_columns_are_values(tmp_path) -> None:
    values, labels = original_size_sweep([8, 16, 32, 64], TARGET)
    assert labels == ["c_size 8x8", "c_size 16x16", "c_size 32x32", "c_size 64x64"]
    assert original_size_sweep([16], (32, 64))[0][0].original_size == (16, 32)
    crops, crop_labels = crop_sweep([(0, 0), (0, 8), (16, 0)], TARGET, original_size=(32, 48))
    assert [c.crop_top_left for c in crops] == [(0, 0), (0, 8), (16, 0)]
    assert crop_labels == ["c_crop 0,0", "c_crop 0,8", "c_crop 16,0*"]  # * = no training image had it

    images = sweep(GaussianDenoiser(), values, seeds=[3, 4], labels=1, shape=SHAPE, steps=6,
                   scheduler_config={"clip_sample": False}, clamp=False, progress=False)
    assert images.shape == (2, 4, *SHAPE)
    # Same seed across a row: the noise pattern is shared, only the mean shifts with c_size.
    centred = images - images.mean(dim=(2, 3, 4), keepdim=True)
    torch.testing.assert_close(centred[0, 0], centred[0, 3], rtol=0, atol=0.05)
    assert (centred[0, 0] - centred[1, 0]).abs().max() > 0.1
    assert images[0, 3].mean() > images[0, 0].mean() + 0.15  # 64/256 - 8/256 apart

    grid = save_grid(images.flatten(0, 1), tmp_path / "sweep.png", nrow=4, row_labels=["seed 3", "seed 4"], col_labels=labels)
    with Image.open(grid) as im:
        assert im.width > 4 * 128 and im.height > 2 * 128  # 8 px cells upscaled to 128 px, plus labels
    files = save_images(images[0], tmp_path / "each", [f"{i:03d}" for i in range(4)])
    assert np.asarray(Image.open(files[0])).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="row labels"):
        save_grid(images.flatten(0, 1), tmp_path / "bad.png", nrow=4, row_labels=["only one"])
