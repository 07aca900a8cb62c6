"""SDXL micro-conditioning: the condition record, its ids and their Fourier embedding.

Conventions, fixed once for the whole project (SDXL paper section 2.2, sgm
``GeneralConditioner``): sizes are ``(height, width)`` and crops are ``(top, left)``, in
pixels. The six ids are ordered ``original_h, original_w, crop_top, crop_left, target_h,
target_w``; each becomes 256 Fourier features (cos block first) and the blocks are
concatenated in that order.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from microcond.cond.record import SIGNALS, MicroCond, resized_size, stack_ids

__all__ = ["SIGNALS", "FOURIER_DIM", "MicroCond", "resized_size", "time_ids", "fourier_features", "MicroCondEmbedder"]

FOURIER_DIM = 256


def time_ids(conds: Sequence[MicroCond], device: torch.device | str | None = None) -> torch.Tensor:
    """(B, 6) int64 ids in SDXL order (:func:`microcond.cond.record.stack_ids` as a tensor)."""
    return torch.from_numpy(stack_ids(conds)).to(device)


def fourier_features(x: torch.Tensor, dim: int = FOURIER_DIM) -> torch.Tensor:
    """SDXL's F(x): ``[cos(x * f), sin(x * f)]``, ``f_i = 10000^(-i / (dim/2))``, in float32.

    Matches sgm ``timestep_embedding`` and diffusers ``get_timestep_embedding(x, dim,
    flip_sin_to_cos=True, downscale_freq_shift=0)``. ``x`` holds raw pixel counts of any
    shape; the result has shape ``(*x.shape, dim)``. The argument is computed in float32 even
    under autocast or when ``x`` is bf16/fp16 (an integer id is exact in float32 up to 2^24).
    """
    if dim % 2:
        raise ValueError(f"fourier_features needs an even dim, got {dim}")
    half = dim // 2
    with torch.autocast(device_type=x.device.type, enabled=False):
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=x.device) / half
        )  # (half,)
        args = x.to(torch.float32)[..., None] * freqs  # (*x.shape, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (*x.shape, dim)


class MicroCondEmbedder(nn.Module):
    """Ids -> concatenated Fourier features, with sgm's per-signal conditioning dropout.

    A signal is a group of ids embedded together: ``original_size`` (2 ids),
    ``crop_top_left`` (2), ``target_size`` (2), or a named extra scalar (1 id each; the SDXL
    refiner's ``aesthetic_score`` is one). Ids are laid out signal after signal in the order
    given, each id as one ``dim`` block, so the default is SDXL's (B, 1536) vector.

    Dropout follows sgm ``GeneralConditioner`` (``ucg_rate``): in training mode each signal of
    each sample is independently replaced by a ZERO embedding with probability ``dropout``.
    The all-zero embedding is the "null" condition for classifier-free guidance; pass ``drop``
    to choose it explicitly at inference. The module has no parameters.
    """

    def __init__(
        self,
        signals: Sequence[str] = SIGNALS,
        extra: Sequence[str] = (),
        dim: int = FOURIER_DIM,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        unknown = [s for s in signals if s not in SIGNALS]
        if unknown:
            raise ValueError(f"unknown micro-condition signal(s) {unknown}; expected a subset of {SIGNALS}")
        if len(set(signals)) != len(signals) or len(set(extra)) != len(extra):
            raise ValueError(f"signals must not repeat, got signals={list(signals)} extra={list(extra)}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout}")
        self.signals = tuple(signals)
        self.extra = tuple(extra)
        self.dim = dim
        self.dropout = float(dropout)
        self.signal_names = self.signals + self.extra
        self.signal_widths = tuple(2 for _ in self.signals) + tuple(1 for _ in self.extra)
        # Index of each id's signal: (n_ids,), used to broadcast a per-signal mask to ids.
        owner = [i for i, width in enumerate(self.signal_widths) for _ in range(width)]
        self.register_buffer("_id_owner", torch.tensor(owner, dtype=torch.long), persistent=False)

    @property
    def n_ids(self) -> int:
        return len(self._id_owner)

    @property
    def out_dim(self) -> int:
        return self.n_ids * self.dim

    def ids(self, conds: Sequence[MicroCond], extra: dict[str, Sequence[float]] | None = None) -> torch.Tensor:
        """(B, n_ids) float32 ids for this embedder's signals, from records and extra scalars."""
        parts = [self.select(time_ids(conds)).to(torch.float32)]  # (B, 2 * n_signals)
        extra = extra or {}
        missing = [name for name in self.extra if name not in extra]
        if missing:
            raise ValueError(f"extra condition(s) {missing} need values, got only {sorted(extra)}")
        for name in self.extra:
            values = torch.as_tensor(extra[name], dtype=torch.float32).reshape(-1, 1)
            if len(values) != len(conds):
                raise ValueError(f"extra condition {name!r} has {len(values)} values for {len(conds)} samples")
            parts.append(values)
        return torch.cat(parts, dim=1)

    def select(self, full_ids: torch.Tensor) -> torch.Tensor:
        """(B, 6) SDXL ids -> (B, 2 * len(signals)) ids of this embedder's signals, in its order."""
        start = {"original_size": 0, "crop_top_left": 2, "target_size": 4}
        columns = [start[s] + k for s in self.signals for k in (0, 1)]
        return full_ids[:, columns]

    @property
    def device(self) -> torch.device:
        return self._id_owner.device

    def sample_drop(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, n_signals) bool mask of dropped signals, each True with probability ``dropout``."""
        u = torch.rand(batch, len(self.signal_names), generator=generator, device=self.device)
        return u < self.dropout

    def null_drop(self, batch: int) -> torch.Tensor:
        """(B, n_signals) mask that drops every signal: the unconditional (null) condition."""
        return torch.ones(batch, len(self.signal_names), dtype=torch.bool, device=self._id_owner.device)

    def forward(
        self,
        ids: torch.Tensor,
        drop: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Embed (B, n_ids) ids to (B, n_ids * dim) float32.

        Args:
            drop: (B, n_signals) bool, True where a signal is replaced by zeros. When omitted,
                a mask is drawn with ``generator`` in training mode and nothing is dropped in
                eval mode.
        """
        if ids.ndim != 2 or ids.shape[1] != self.n_ids:
            raise ValueError(f"expected ids of shape (B, {self.n_ids}) for signals {self.signal_names}, got {tuple(ids.shape)}")
        if ids.is_floating_point() and ids.dtype != torch.float32 and ids.dtype != torch.float64:
            # A bf16/fp16 id has already been rounded (1023 -> 1024): refuse instead of hiding it.
            raise ValueError(f"ids must be int64 or float32 so they stay exact, got {ids.dtype}")
        emb = fourier_features(ids, self.dim)  # (B, n_ids, dim)
        if drop is None and self.training and self.dropout > 0:
            drop = self.sample_drop(ids.shape[0], generator)
        if drop is not None:
            if drop.shape != (ids.shape[0], len(self.signal_names)):
                raise ValueError(f"drop mask must be (B, {len(self.signal_names)}), got {tuple(drop.shape)}")
            keep = ~drop.to(torch.bool)[:, self._id_owner]  # (B, n_ids)
            emb = emb * keep[..., None]
        return emb.flatten(1)  # (B, n_ids * dim)
