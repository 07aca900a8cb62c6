"""Data stages: scan, report, buckets, crop, loader (see DESIGN.md). No model imports here.

For your own pipeline, the names below are importable from ``microcond.data`` (lazily, so that
the torch-free ones start fast): :class:`CropStep` (sample -> cropped sample with its time ids),
:func:`assign_bucket`, :func:`make_buckets`, :func:`parse_buckets`, :func:`decode_crop`,
:func:`read_sizes` (file and effective sizes of a scan index by path) and :func:`read_index`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from microcond.base.exports import lazy_names

_EXPORTS = {
    "CropStep": "microcond.data.step",
    "assign_bucket": "microcond.data.buckets",
    "make_buckets": "microcond.data.buckets",
    "parse_buckets": "microcond.data.buckets",
    "decode_crop": "microcond.data.crop",
    "read_sizes": "microcond.data.index",
    "read_index": "microcond.data.index",
}

if TYPE_CHECKING:  # what editors and type checkers see
    from microcond.data.buckets import assign_bucket, make_buckets, parse_buckets
    from microcond.data.crop import decode_crop
    from microcond.data.index import read_index, read_sizes
    from microcond.data.step import CropStep

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_names("microcond.data", _EXPORTS, globals())
