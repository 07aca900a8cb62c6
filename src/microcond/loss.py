"""The training objective, built once from the config (edm2's ``loss_fn``): the noise schedule,
the prediction target and its weighting, and the step's draws of noise, timesteps and dropout."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from microcond.batch import Batch
from microcond.config import TrainConfig


def training_scheduler(cfg: TrainConfig) -> DDPMScheduler:
    """Discrete 1000-step DDPM (SDXL section 2.5) as diffusers defines it.

    Pixel-space samplers clip the predicted clean image to [-1, 1] (Ho et al. 2020, and
    diffusers' default); latents are unbounded, so the SDXL preset does not clip.
    """
    clip = cfg.preset != "sdxl"
    if cfg.beta_schedule == "scaled_linear":  # SDXL's betas
        return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=cfg.prediction_type, clip_sample=clip)
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type, clip_sample=clip)


class DiffusionLoss:
    """Mean squared error of the denoiser's prediction (epsilon or v) at random timesteps.

    Every random draw of a step (noise, offset noise, timesteps, micro-condition dropout through
    the embedder, label dropout and caption dropout through the denoiser, in that order) covers the
    whole optimizer batch; each accumulation round and rank takes its ``rows``, so one process with
    batch 2b, two ranks with b and two rounds of b compute the same update.
    """

    def __init__(self, cfg: TrainConfig, scheduler: DDPMScheduler | None = None) -> None:
        self.scheduler = scheduler or training_scheduler(cfg)
        self.prediction_type, self.offset_noise, self.weight_cap = cfg.prediction_type, cfg.offset_noise, cfg.loss_weight_cap
        self.labelled = bool(cfg.num_classes)

    def __call__(self, net: torch.nn.Module, batch: Batch, generator: torch.Generator, rows: slice, step_batch: int) -> torch.Tensor:
        """Args: net, the denoiser (or its DDP wrapper); step_batch, the optimizer batch the draws cover."""
        denoiser = getattr(net, "module", net)
        x0 = batch.x0  # (b, C, H, W)
        b, c, h, w = x0.shape
        device = x0.device
        noise = torch.randn(step_batch, c, h, w, generator=generator, device=device)[rows]  # (b, C, H, W)
        if self.offset_noise:
            noise = noise + self.offset_noise * torch.randn(step_batch, c, 1, 1, generator=generator, device=device)[rows]
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (step_batch,), generator=generator, device=device)[rows]
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
        if not self.weight_cap or self.prediction_type == "epsilon":  # epsilon weighs every level 1, under any cap
            return torch.nn.functional.mse_loss(pred.float(), target)
        # The v loss is 1 + 1/SNR = 1/alpha_bar times the epsilon loss; cap that factor so the noisiest
        # levels do not swamp the rest (cap 1 gives back the epsilon loss of the same prediction).
        weight = torch.clamp(self.weight_cap * self.scheduler.alphas_cumprod.to(device)[t], max=1.0)  # (b,)
        return (weight * (pred.float() - target).pow(2).mean(dim=(1, 2, 3))).mean()
