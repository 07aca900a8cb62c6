"""The denoiser: diffusers ``UNet2DConditionModel`` fed by our micro-condition embedding.

SDXL adds ``add_embedding(concat(pooled_text, F(ids)))`` to the timestep embedding
(``addition_embed_type="text_time"``). diffusers computes F(ids) itself and so cannot express
sgm's dropped (zero) condition (diffusers issue #4208). :class:`MicroCondUNet` keeps every
parameter name of ``UNet2DConditionModel`` (an SDXL checkpoint loads unchanged) and also
accepts the features precomputed by :class:`~microcond.conditions.MicroCondEmbedder`.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from microcond.conditions import MicroCondEmbedder


class MicroCondUNet(UNet2DConditionModel):
    """``UNet2DConditionModel`` whose ``text_time`` branch also takes ``micro_embeds``.

    Call it as diffusers does, with ``added_cond_kwargs={"text_embeds": pooled, "micro_embeds":
    embedder(ids, drop)}``; with ``"time_ids"`` instead of ``"micro_embeds"`` it behaves exactly
    like the parent class.
    """

    def get_aug_embed(self, emb: torch.Tensor, encoder_hidden_states: torch.Tensor, added_cond_kwargs: dict):
        if self.config.addition_embed_type != "text_time" or "micro_embeds" not in added_cond_kwargs:
            return super().get_aug_embed(emb, encoder_hidden_states, added_cond_kwargs)
        text_embeds = added_cond_kwargs["text_embeds"]  # (B, pooled_dim)
        micro_embeds = added_cond_kwargs["micro_embeds"]  # (B, n_ids * 256)
        expected = self.add_embedding.linear_1.in_features - text_embeds.shape[-1]
        if micro_embeds.shape[-1] != expected:
            raise ValueError(
                f"micro_embeds has width {micro_embeds.shape[-1]} but this UNet's add_embedding takes "
                f"{expected} after {text_embeds.shape[-1]} pooled-text features"
            )
        add_embeds = torch.cat([text_embeds, micro_embeds], dim=-1)  # (B, in_features)
        return self.add_embedding(add_embeds.to(emb.dtype))


def check_embedder_matches(unet: UNet2DConditionModel, embedder: MicroCondEmbedder, pooled_dim: int) -> None:
    """Raise ``ValueError`` unless ``embedder`` produces exactly what ``unet`` was built to consume."""
    cfg = unet.config
    if cfg.addition_embed_type != "text_time":
        raise ValueError(f"the UNet needs addition_embed_type='text_time' for micro-conditioning, got {cfg.addition_embed_type!r}")
    if cfg.addition_time_embed_dim != embedder.dim:
        raise ValueError(f"UNet addition_time_embed_dim is {cfg.addition_time_embed_dim}, the embedder uses dim={embedder.dim}")
    if not cfg.flip_sin_to_cos or cfg.freq_shift != 0:
        raise ValueError(
            "SDXL's Fourier features are cos-first with no frequency shift; this UNet has "
            f"flip_sin_to_cos={cfg.flip_sin_to_cos}, freq_shift={cfg.freq_shift}"
        )
    width = unet.add_embedding.linear_1.in_features
    if width != pooled_dim + embedder.out_dim:
        raise ValueError(
            f"the UNet's add_embedding takes {width} features; {pooled_dim} pooled + {embedder.n_ids} ids x "
            f"{embedder.dim} ({', '.join(embedder.signal_names)}) = {pooled_dim + embedder.out_dim}. "
            "Match the conditions to the checkpoint (SDXL base: 6 ids, refiner: 5)."
        )
