"""The training objective, built once from the config (edm2's ``loss_fn``): the noise schedule,
the distribution of noise levels, the prediction target and its weighting, and the step's draws
of noise, timesteps and dropout.

Noise levels are the 1000 discrete timesteps of the DDPM schedule (SDXL section 2.5), written
also as the signal-to-noise ratio ``SNR = alpha_bar / (1 - alpha_bar)`` or as EDM's noise level
``sigma = SNR ** -0.5`` (Karras et al. 2022: a VP sample is ``sqrt(alpha_bar) (x0 + sigma n)``).
Every weighting below is stated as the weight it gives the clean-image error ``|x0_hat - x0|^2``,
since that is what the three parametrisations share: epsilon's loss is ``SNR`` times it, v's
``SNR + 1`` times it.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDPMScheduler

from microcond.train.batch import Batch
from microcond.train.config import TrainConfig


def training_scheduler(cfg: TrainConfig) -> DDPMScheduler:
    """Discrete 1000-step DDPM (SDXL section 2.5) as diffusers defines it.

    Pixel-space samplers clip the predicted clean image to [-1, 1] (Ho et al. 2020, and
    diffusers' default); latents are unbounded, so a run with a VAE does not clip.
    """
    clip = not cfg.vae
    if cfg.beta_schedule == "scaled_linear":  # SDXL's betas
        return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=cfg.prediction_type, clip_sample=clip)
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type, clip_sample=clip)


def schedule_snr(scheduler: DDPMScheduler) -> torch.Tensor:
    """(T,) float64 signal-to-noise ratio of every timestep (diffusers' ``compute_snr``)."""
    alphas_cumprod = scheduler.alphas_cumprod.double()
    return alphas_cumprod / (1 - alphas_cumprod)


def timestep_probabilities(snr: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(T,) probability of each discrete timestep when ``log sigma ~ N(mean, std^2)`` (EDM's
    training distribution, Karras et al. 2022 section 5: P_mean, P_std).

    Each timestep takes the normal's mass over its cell of log sigma, the cell running halfway to
    its neighbours, so the discrete draw follows the continuous one as closely as the grid allows
    (the first and last cells take the tails).
    """
    log_sigma = -0.5 * snr.log()  # (T,) increasing with t
    edges = (log_sigma[1:] + log_sigma[:-1]) / 2  # (T - 1,)
    cdf = 0.5 * (1 + torch.erf((edges - mean) / (std * math.sqrt(2))))
    cdf = torch.cat([cdf.new_zeros(1), cdf, cdf.new_ones(1)])  # (T + 1,)
    return (cdf[1:] - cdf[:-1]).float()  # (T,)


def loss_weights(snr: torch.Tensor, prediction_type: str, weighting: str, *, sigma_data: float = 0.5, gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weight of the prediction's squared error, from its timestep's SNR.

    ``weighting`` names the weight of the clean-image error: ``edm`` is EDM's
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = SNR + 1 / sigma_data^2
    (Karras et al. 2022, eq. 8 and Table 1); ``min_snr`` is min(SNR, gamma) (Hang et al. 2023,
    as diffusers' training scripts compute it). The result divides that by the weight the
    prediction's own loss already carries (SNR for epsilon, SNR + 1 for v).
    """
    carried = snr if prediction_type == "epsilon" else snr + 1
    if weighting == "edm":
        wanted = snr + 1 / sigma_data**2
    elif weighting == "min_snr":
        wanted = torch.clamp(snr, max=gamma)
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}; expected edm or min_snr")
    return wanted / carried


class DiffusionLoss:
    """Mean squared error of the denoiser's prediction (epsilon or v) at random timesteps.

    Timesteps are uniform (SDXL) or follow EDM's log-normal noise levels, optionally mixed with a
    share of uniform ones (which keep the noisiest levels, where the layout is decided); the per-sample error is
    weighted as the config says (none, EDM's, min-SNR-gamma, or v's weight capped in epsilon terms).

    Every random draw of a step (noise, offset noise, timesteps, micro-condition dropout through
    the embedder, label dropout and caption dropout through the denoiser, in that order) covers the
    whole optimizer batch; each accumulation round and rank takes its ``rows``, so one process with
    batch 2b, two ranks with b and two rounds of b compute the same update.
    """

    def __init__(self, cfg: TrainConfig, scheduler: DDPMScheduler | None = None) -> None:
        self.scheduler = scheduler or training_scheduler(cfg)
        self.prediction_type, self.offset_noise, self.weight_cap = cfg.prediction_type, cfg.offset_noise, cfg.loss_weight_cap
        self.labelled = bool(cfg.num_classes)
        snr = schedule_snr(self.scheduler)  # (T,)
        self.t_probs = None  # (T,) probability of each timestep; None = uniform
        if cfg.timestep_sampling == "lognormal":
            uniform = torch.full_like(snr, 1 / len(snr)).float()
            self.t_probs = (1 - cfg.uniform_timestep_share) * timestep_probabilities(snr, cfg.lognormal_mean, cfg.lognormal_std) + cfg.uniform_timestep_share * uniform
        self.weights = None  # (T,) per-timestep weight of the prediction's squared error
        if cfg.loss_weighting != "none":
            self.weights = loss_weights(snr, cfg.prediction_type, cfg.loss_weighting, sigma_data=cfg.sigma_data, gamma=cfg.min_snr_gamma).float()
        elif self.weight_cap and self.prediction_type == "v_prediction":
            # The v loss is 1 + 1/SNR = 1/alpha_bar times the epsilon loss; cap that factor so the
            # noisiest levels do not swamp the rest (cap 1 gives back the epsilon loss of the same prediction).
            self.weights = torch.clamp(self.weight_cap * self.scheduler.alphas_cumprod.float(), max=1.0)

    def draw_timesteps(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """(n,) int64 timesteps: uniform, or from the log-normal noise-level distribution."""
        if self.t_probs is None:
            return torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=generator, device=device)
        return torch.multinomial(self.t_probs.to(device), n, replacement=True, generator=generator)

    def __call__(self, net: torch.nn.Module, batch: Batch, generator: torch.Generator, rows: slice, step_batch: int) -> torch.Tensor:
        """Args: net, the denoiser (or its DDP wrapper); step_batch, the optimizer batch the draws cover."""
        denoiser = getattr(net, "module", net)
        x0 = batch.x0  # (b, C, H, W)
        b, c, h, w = x0.shape
        device = x0.device
        noise = torch.randn(step_batch, c, h, w, generator=generator, device=device)[rows]  # (b, C, H, W)
        if self.offset_noise:
            noise = noise + self.offset_noise * torch.randn(step_batch, c, 1, 1, generator=generator, device=device)[rows]
        t = self.draw_timesteps(step_batch, generator, device)[rows]  # (b,)
        drop = denoiser.embedder.sample_drop(step_batch, generator)[rows]  # (b, n_signals)
        labels = batch.labels if self.labelled else torch.full((b,), -1, dtype=torch.long, device=device)
        labels = torch.where(denoiser.sample_label_drop(step_batch, generator)[rows], torch.full_like(labels, -1), labels)
        text = {}
        if batch.context is not None:  # drawn after the rest
            keep = denoiser.sample_caption_keep(step_batch, generator)[rows]  # (b,)
            text = {"context": batch.context * keep[:, None, None], "pooled": batch.pooled * keep[:, None]}
        xt = self.scheduler.add_noise(x0, noise, t)
        target = noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        pred = net(xt, t, denoiser.embedder.select(batch.ids), drop, labels, **text)
        if self.weights is None:
            return torch.nn.functional.mse_loss(pred.float(), target)
        weight = self.weights.to(device)[t]  # (b,)
        return (weight * (pred.float() - target).pow(2).mean(dim=(1, 2, 3))).mean()
