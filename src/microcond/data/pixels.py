"""The one conversion each way between stored pixels (uint8, 0..255) and the model's range
(float32 in [-1, 1], the range every denoiser, metric and VAE here works in)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def to_model(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape) -> float32 in [-1, 1]: ``x / 127.5 - 1``."""
    return pixels.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (clamped first) -> uint8 pixels, rounded, on the CPU."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def stack_hwc(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """Same-sized (H, W, 3) uint8 arrays -> one (N, 3, H, W) float32 batch in [-1, 1]."""
    return to_model(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
