"""Micro-conditioning inside your own data pipeline: one sample in, the same sample cropped and
carrying its micro-conditions out.

:class:`CropStep` is the crop of ``microcond train`` as a plain callable, for a webdataset
pipeline (``.map(step)``), a Hugging Face ``datasets`` one (``.map(step)`` or
``.set_transform(step.batch)``) or a torch ``Dataset.__getitem__``::

    step = CropStep(buckets="sdxl", flip_probability=0.5, seed=0)
    sample = step({"__key__": "000123", "jpg": jpeg_bytes})
    sample["pixels"]    # (3, h, w) uint8 tensor: the crop, (h, w) = sample["bucket"]
    sample["time_ids"]  # (6,) int64 tensor: SDXL's add_time_ids (original size, crop, target size)

The image is decoded, oriented (EXIF), resized to cover its bucket and cropped as SDXL's
Algorithm 1 does (offset along the long axis only, flip chosen before the offset), so the crop
recorded is true for the pixels. The random choices come from a generator keyed by (seed, epoch,
the sample's key), as in ``microcond train``: the same sample is cropped the same way in any
order, on any worker.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from microcond.data.buckets import Bucket, assign_bucket, parse_buckets
from microcond.data.crop import CROP_MODES, crop, load_resized
from microcond.data.shards import sample_key
from microcond.data.source import sample_rng

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "image", "img")  # webdataset's extensions, then datasets' column


@dataclass
class CropStep:
    """Decode, resize to cover the bucket, crop and record (module doc).

    Args:
        buckets: a bucket spec (``"sdxl"``, ``"square:1024"``, ``"64x96,96x64"``) or (h, w) pairs.
        mode: ``"random"`` (training) or ``"center"``.
        flip_probability: chance of a horizontal flip, drawn before the offset.
        seed, epoch: with the sample's key, they fix every random choice.
        image_key: where the image is (bytes, a path, a file object or a PIL image); default the
            first of :data:`IMAGE_KEYS` the sample has.
        key_field: the sample's key (webdataset's ``"__key__"``); samples without one are keyed
            by their order of arrival.
        sizes: original sizes to tell the model instead of the file's, by the sample's key or
            path (for instance the effective sizes of :func:`microcond.data.read_sizes`); a
            sample may also carry its own under ``"original_size"`` (pre-resized pixels).
    """

    buckets: str | Sequence[Bucket] = "sdxl"
    mode: str = "random"
    flip_probability: float = 0.0
    seed: int = 0
    epoch: int = 0
    image_key: str | None = None
    key_field: str = "__key__"
    sizes: Mapping[str, tuple[int, int]] | None = None
    background: tuple[int, int, int] = (255, 255, 255)
    _arrivals: Any = field(default_factory=itertools.count, init=False, repr=False)

    def __post_init__(self) -> None:
        self.buckets = parse_buckets(self.buckets) if isinstance(self.buckets, str) else tuple(tuple(int(v) for v in b) for b in self.buckets)
        if self.mode not in CROP_MODES or not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"expected mode in {CROP_MODES} and flip_probability in [0, 1], got {self.mode!r}, {self.flip_probability}")

    def _image(self, sample: Mapping[str, Any]) -> tuple[str, Any]:
        keys = [self.image_key] if self.image_key else [k for k in IMAGE_KEYS if k in sample]
        if not keys or keys[0] not in sample:
            raise ValueError(f"no image in the sample: expected one of {[self.image_key] if self.image_key else IMAGE_KEYS}, "
                             f"found {sorted(sample)} (set image_key)")
        return keys[0], sample[keys[0]]

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """The sample with ``pixels``, ``time_ids``, ``micro_cond`` (a MicroCond) and ``bucket`` added."""
        import torch
        from PIL import Image

        name, image = self._image(sample)
        key = sample.get(self.key_field)
        key = str(key) if key is not None else f"#{next(self._arrivals)}"
        source = image.get("bytes") or image.get("path") if isinstance(image, dict) else image  # datasets' undecoded Image
        if isinstance(source, Image.Image):  # decoded already (datasets): upright, then lossless bytes for the one decoding path
            import io

            from PIL import ImageOps

            buffer = io.BytesIO()
            ImageOps.exif_transpose(source).save(buffer, format="PNG")
            source = buffer.getvalue()
        given = sample.get("original_size")
        told = self.sizes.get(key) if self.sizes is not None else None
        if told is None and self.sizes is not None and isinstance(source, (str, os.PathLike)):
            told = self.sizes.get(os.path.abspath(source))
        target = self._bucket(source, given)
        rng = sample_rng(self.seed, self.epoch, sample_key(key))
        flip = bool(rng.random() < self.flip_probability)  # drawn first, as the training loader does
        resized, original = load_resized(source, target, original_size=tuple(given) if given is not None else None, background=self.background)
        pixels, cond = crop(resized, original, target, rng, mode=self.mode, flip=flip)
        if told is not None:
            from dataclasses import replace

            cond = replace(cond, original_size=tuple(int(v) for v in told))
        return {**sample, "pixels": torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1),  # (3, h, w) uint8
                "time_ids": torch.tensor(cond.ids, dtype=torch.int64), "micro_cond": cond, "bucket": target}

    def _bucket(self, source: Any, given: Sequence[int] | None) -> Bucket:
        """The bucket of the original (the given size, else the file's oriented size, header only)."""
        if given is not None:
            return assign_bucket(int(given[0]), int(given[1]), self.buckets)
        from microcond.data.crop import open_image, oriented_size

        if hasattr(source, "seek"):
            position = source.tell()
        with open_image(source) as header:
            h, w = oriented_size(header)
        if hasattr(source, "seek"):
            source.seek(position)
        return assign_bucket(h, w, self.buckets)

    def batch(self, samples: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """The step over a batch of columns, for ``datasets``' ``set_transform`` and batched ``map``."""
        n = len(next(iter(samples.values())))
        rows = [self({k: v[i] for k, v in samples.items()}) for i in range(n)]
        return {k: [row[k] for row in rows] for k in rows[0]} if rows else {}
