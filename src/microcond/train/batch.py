"""What the training loop trains on, whatever the model family: a typed batch, and the step
that makes one from the loader's pixels (the SDXL stage makes one from latents and text)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from microcond.data.pixels import to_model


@dataclass(frozen=True)
class Batch:
    """One batch in the model's space.

    Attributes:
        x0: (B, C, H, W) clean images: pixels in [-1, 1], or scaled VAE latents.
        ids: (B, 6) int64 micro-condition ids in SDXL order.
        labels: (B,) int64 class ids, -1 for none.
        context: (B, L, D) text tokens for cross-attention (SDXL runs), else None.
        pooled: (B, P) pooled text embedding (SDXL runs), else None.
    """

    x0: torch.Tensor
    ids: torch.Tensor
    labels: torch.Tensor
    context: torch.Tensor | None = None
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    def with_text(self, context: torch.Tensor, pooled: torch.Tensor) -> "Batch":
        return replace(self, context=context, pooled=pooled)


def pixel_batch(raw: dict[str, torch.Tensor]) -> Batch:
    """The pixel presets' step: the loader's uint8 pixels to [-1, 1]."""
    return Batch(x0=to_model(raw["pixels"]), ids=raw["ids"], labels=raw["labels"])
