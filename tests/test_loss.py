"""The training objective: noise-level draws and loss weightings against the papers' formulas
and diffusers' implementation, and the conditioning path's zero start."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import RecordingNet

from microcond.train import config as config_mod
from microcond.train.batch import pixel_batch
from microcond.train.loop import step_generator
from microcond.train.loss import DiffusionLoss, loss_weights, schedule_snr, timestep_probabilities, training_scheduler


def _batch(n: int = 64):
    pixels = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return pixel_batch({"pixels": pixels, "ids": torch.zeros(n, 6, dtype=torch.long), "labels": torch.zeros(n, dtype=torch.long)})


def _loss(cfg, batch, output, step: int = 3):
    """(loss, the timesteps, x_t, alpha_bar per sample) for one step of ``cfg``'s loss."""
    net = RecordingNet(cfg, output)
    loss_fn = DiffusionLoss(cfg)
    loss = loss_fn(net, batch, step_generator(0, step, torch.device("cpu")), slice(0, len(batch)), len(batch))
    seen = net.seen[-1]
    return loss, seen["t"], seen["x"], loss_fn.scheduler.alphas_cumprod[seen["t"]].view(-1, 1, 1, 1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_edm_weighting_is_karras_lambda_on_the_clean_image_error(prediction_type):
    """EDM's loss lambda(sigma) |D(x) - x0|^2, lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
    (Karras et al. 2022, Table 1), with D the clean image the prediction implies and sigma the VE
    noise level of the VP sample: whichever output the network has."""
    batch = _batch()
    output = lambda x: 0.3 * torch.linspace(-1, 1, x.numel()).reshape(x.shape)  # noqa: E731
    cfg = config_mod.resolve("tiny", overrides={"prediction_type": prediction_type, "loss_weighting": "edm", "sigma_data": 0.5})
    loss, t, xt, a = _loss(cfg, batch, output)
    pred = output(xt)
    x0_hat = (xt - (1 - a).sqrt() * pred) / a.sqrt() if prediction_type == "epsilon" else a.sqrt() * xt - (1 - a).sqrt() * pred
    sigma = ((1 - a) / a).sqrt().flatten()  # (b,)
    lam = (sigma**2 + 0.5**2) / (sigma * 0.5) ** 2
    edm = (lam * (x0_hat - batch.x0).pow(2).mean(dim=(1, 2, 3))).mean()
    assert torch.allclose(loss, edm.float(), rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weighting_matches_diffusers_training_scripts(prediction_type):
    """diffusers' train_text_to_image.py: weight = min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v."""
    from diffusers.training_utils import compute_snr

    scheduler = training_scheduler(config_mod.resolve("tiny", overrides={"prediction_type": prediction_type}))
    t = torch.arange(0, 1000, 7)
    snr = compute_snr(scheduler, t)
    expected = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    expected = expected / snr if prediction_type == "epsilon" else expected / (snr + 1)
    ours = loss_weights(schedule_snr(scheduler)[t], prediction_type, "min_snr", gamma=5.0)
    assert torch.allclose(ours.float(), expected, rtol=1e-5)


def test_lognormal_timesteps_follow_edm_noise_levels():
    """The discrete draw gives each timestep the normal's mass over its cell of log sigma: the share
    of draws below a level matches the normal CDF there, within the grid's cell width."""
    scheduler = training_scheduler(config_mod.resolve("tiny"))
    snr = schedule_snr(scheduler)
    log_sigma = -0.5 * snr.log()
    probs = timestep_probabilities(snr, -1.2, 1.2)
    assert probs.shape == (1000,) and torch.isclose(probs.sum(), torch.tensor(1.0)) and (probs >= 0).all()
    for level in (-3.0, -1.2, 0.0, 1.5):
        below = probs[log_sigma <= level].sum().item()
        cdf = 0.5 * (1 + math.erf((level - -1.2) / (1.2 * math.sqrt(2))))
        cell = (log_sigma[1:] - log_sigma[:-1]).max().item()
        slack = 0.5 * (cell / 1.2) * 0.4  # the normal's density is at most 0.4 / std
        assert abs(below - cdf) <= slack + 1e-6, (level, below, cdf)
    # The loss draws from it, with the step's generator: the same step draws the same timesteps.
    cfg = config_mod.resolve("tiny", overrides={"prediction_type": "v_prediction", "timestep_sampling": "lognormal"})
    batch = _batch(256)
    _, t1, _, _ = _loss(cfg, batch, None)
    _, t2, _, _ = _loss(cfg, batch, None)
    assert torch.equal(t1, t2)
    median = log_sigma[t1].median().item()
    assert abs(median - -1.2) < 0.3  # 256 draws: the median's standard error is about 0.09
    _, t_uniform, _, _ = _loss(config_mod.resolve("tiny", overrides={"timestep_sampling": "uniform"}), batch, None)
    assert log_sigma[t_uniform].median() > 1.0  # uniform timesteps: half of them are noisier than sigma 3


def test_weighting_options_are_checked():
    with pytest.raises(ValueError, match="loss_weighting"):
        config_mod.resolve("tiny", overrides={"loss_weighting": "snr"})
    with pytest.raises(ValueError, match="one weighting"):
        config_mod.resolve("tiny", overrides={"loss_weighting": "edm", "loss_weight_cap": 10.0})
    with pytest.raises(ValueError, match="lognormal_std"):
        config_mod.resolve("tiny", overrides={"lognormal_std": 0.0})
    with pytest.raises(ValueError, match="zero_init_conditioning.*sdxl"):
        config_mod.resolve("sdxl", overrides={"pretrained": "/x", "zero_init_conditioning": True})


def test_zero_initialised_conditioning_starts_without_effect_and_outside_weight_decay():
    from microcond.model import build_denoiser, param_groups

    cfg = config_mod.resolve("tiny", overrides={"zero_init_conditioning": True, "num_classes": 3, "weight_decay": 0.1, "resolution": 16})
    torch.manual_seed(0)
    model = build_denoiser(cfg).eval()
    layer = model.unet.add_embedding.linear_2
    assert not layer.weight.any() and not layer.bias.any()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([500, 500])
    ids = torch.tensor([[8, 8, 0, 0, 16, 16], [400, 800, 0, 200, 16, 16]])
    with torch.no_grad():
        a = model(x, t, ids, None, torch.tensor([0, 2]))
        b = model(x, t, ids.flip(0), None, torch.tensor([2, 0]))
    assert torch.equal(a, b)  # conditions and classes start with no effect
    groups = param_groups(model, cfg)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(layer.weight) not in decayed and id(layer.bias) not in decayed
    assert id(model.unet.add_embedding.linear_1.weight) in decayed
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # Without the option the layer starts as diffusers initialises it, and the conditions act at once.
    plain = build_denoiser(config_mod.resolve("tiny", overrides={"num_classes": 3, "resolution": 16, "zero_init_conditioning": False})).eval()
    assert plain.unet.add_embedding.linear_2.weight.any()


def test_centred_micro_features_fold_into_an_sdxl_exact_unet():
    """The centred denoiser and the plain diffusers UNet with the centre folded into its bias
    compute the same output from SDXL's own F(ids) (diffusers' text_time path, time_ids given)."""
    from diffusers import UNet2DConditionModel

    from microcond.model import build_denoiser, center_bias

    cfg = config_mod.resolve("tiny", overrides={"center_micro_features": True, "num_classes": 3, "resolution": 16})
    torch.manual_seed(0)
    model = build_denoiser(cfg).eval()
    # The constant features (target size, low frequencies) are near zero once centred.
    ids = torch.tensor([[8, 16, 0, 0, 16, 16], [400, 800, 0, 200, 16, 16], [16, 16, 0, 0, 16, 16]])
    centred = model.embedder(ids) - model.micro_center  # (3, 1536)
    assert centred[:, -512:].abs().max() < 1e-6 and centred[2].abs().max() < 1e-6  # the target block; the default query itself
    plain = UNet2DConditionModel.from_config(model.unet.config).eval()
    plain.load_state_dict(center_bias(model.unet.state_dict(), model.micro_center, model.pooled_dim, prefix=""))
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 900])
    labels = torch.tensor([0, 2, -1])
    with torch.no_grad():
        ours = model(x, t, ids, None, labels)
        pooled = model.class_embedding(torch.where(labels < 0, 3, labels))
        theirs = plain(x, t, x.new_zeros(3, 1, model.context_dim), added_cond_kwargs={"text_embeds": pooled, "time_ids": ids.float()}).sample
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.equal(plain.add_embedding.linear_1.bias, model.unet.add_embedding.linear_1.bias)
