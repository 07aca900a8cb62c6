"""microcond: SDXL micro-conditioning (original size, crop, target size) for diffusion training.

Sizes are ``(height, width)`` and crops ``(top, left)``, in pixels, everywhere; see
:class:`microcond.MicroCond`. Names are imported lazily so that torch-free commands (``scan``,
``report``) start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from microcond.base.exports import lazy_names

__version__ = "0.1.0"

_EXPORTS = {
    "MicroCond": "microcond.cond.record",
    "MicroCondEmbedder": "microcond.cond.embedder",
    "fourier_features": "microcond.cond.embedder",
    "time_ids": "microcond.cond.embedder",
    "combine_guidance": "microcond.cond.guidance",
    "MicroCondUNet": "microcond.model",
    "MicroCondXLPipeline": "microcond.sample.pipeline",
    "CropStep": "microcond.data.step",
    "assign_bucket": "microcond.data.buckets",
    "read_sizes": "microcond.data.index",
}

if TYPE_CHECKING:  # what editors and type checkers see
    from microcond.cond.embedder import MicroCondEmbedder, fourier_features, time_ids
    from microcond.cond.guidance import combine_guidance
    from microcond.cond.record import MicroCond
    from microcond.data.buckets import assign_bucket
    from microcond.data.index import read_sizes
    from microcond.data.step import CropStep
    from microcond.model import MicroCondUNet
    from microcond.sample.pipeline import MicroCondXLPipeline

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_names("microcond", _EXPORTS, globals())
