"""Classifier-free guidance with a separate scale for the micro-conditions.

Plain guidance (Ho & Salimans 2022) moves a prediction away from one partner: the negative
prompt or class together with the negative micro-conditions. Micro-condition guidance splits
that step in two, one term per condition, as InstructPix2Pix does for its two conditions
(Brooks et al. 2023, eq. 3) and as Berrada et al. (NeurIPS 2024, arXiv 2411.03177) argue for
control metadata such as size and crop, whose influence should be tuned apart from the
semantic condition's. With ``c`` the content condition (prompt or class), ``m`` the
micro-conditions, and primes marking their negatives (a negative micro-condition may be the
null, zero-embedding one)::

    uncond       = eps(c', m')
    micro_uncond = eps(c,  m')
    cond         = eps(c,  m)

    eps = uncond + scale * (micro_uncond - uncond) + micro_scale * (cond - micro_uncond)

The first term guides the content at fixed micro-conditions, the second guides the
micro-conditions at fixed content. With ``micro_scale == scale`` the sum telescopes to plain
guidance ``uncond + scale * (cond - uncond)``; with ``scale == 1`` the content term is zero and
only the micro-conditions are guided. No diffusers import: samplers and pipelines share it.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["combine_guidance"]


def combine_guidance(
    uncond: Tensor,
    cond: Tensor,
    scale: float,
    *,
    micro_uncond: Tensor | None = None,
    micro_scale: float | None = None,
) -> Tensor:
    """Guided model output from the branch predictions (the form is in the module docstring).

    Args:
        uncond: prediction with the negative content and the negative micro-conditions.
        cond: prediction with the content and the micro-conditions.
        scale: content (text or class) guidance scale; 1 leaves the content unguided.
        micro_uncond: prediction with the content and the negative micro-conditions; given
            together with ``micro_scale``.
        micro_scale: micro-condition guidance scale. ``None`` (the default) is plain
            classifier-free guidance, ``uncond + scale * (cond - uncond)``, with the same
            arithmetic as diffusers' pipelines.
    """
    if (micro_uncond is None) != (micro_scale is None):
        given = "micro_uncond" if micro_uncond is not None else "micro_scale"
        raise ValueError(f"micro-condition guidance needs both micro_uncond and micro_scale, got only {given}")
    branches = {"uncond": uncond, "cond": cond} | ({"micro_uncond": micro_uncond} if micro_uncond is not None else {})
    if len({tuple(b.shape) for b in branches.values()}) != 1:
        shapes = ", ".join(f"{name} {tuple(b.shape)}" for name, b in branches.items())
        raise ValueError(f"guidance branches must have one shape, got {shapes}")
    if micro_scale is None:
        return uncond + scale * (cond - uncond)
    return uncond + scale * (micro_uncond - uncond) + micro_scale * (cond - micro_uncond)
