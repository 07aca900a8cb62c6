"""microcond: SDXL micro-conditioning (original size, crop, target size) for diffusion training.

Sizes are ``(height, width)`` and crops ``(top, left)``, in pixels, everywhere; see
:class:`microcond.MicroCond`. Names are imported lazily so that torch-free commands (``scan``,
``report``) start fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "MicroCond": "microcond.cond.record",
    "MicroCondEmbedder": "microcond.cond.embedder",
    "fourier_features": "microcond.cond.embedder",
    "time_ids": "microcond.cond.embedder",
    "MicroCondUNet": "microcond.model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'microcond' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
