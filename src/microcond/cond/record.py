"""The condition record of one training sample, without torch (data stages import it).

Conventions, fixed once for the whole project (SDXL paper section 2.2, sgm
``GeneralConditioner``): sizes are ``(height, width)`` and crops are ``(top, left)``, in
pixels. The ids are ordered ``original_h, original_w, crop_top, crop_left, target_h, target_w``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

SIGNALS = ("original_size", "crop_top_left", "target_size")


def _check_pair(field: str, value: object, *, positive: bool) -> tuple[int, int]:
    """Validate one (a, b) pair of integer pixels; return it as a tuple of ints."""
    kind = "(height, width)" if field != "crop_top_left" else "(top, left)"
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"MicroCond.{field} must be a pair {kind} of integers, got {value!r}")
    pair = []
    for v in value:
        integral = hasattr(v, "__index__") and not isinstance(v, bool)
        if not integral and isinstance(v, float) and v.is_integer():
            integral = True
        if not integral:
            raise ValueError(
                f"MicroCond.{field} must hold integer pixels {kind}, got {value!r} ({type(v).__name__})"
            )
        pair.append(int(v))
    low = 1 if positive else 0
    if pair[0] < low or pair[1] < low:
        need = "positive" if positive else "non-negative"
        raise ValueError(f"MicroCond.{field} must be {need} {kind}, got {value!r}")
    return pair[0], pair[1]


def resized_size(original_size: tuple[int, int], target_size: tuple[int, int]) -> tuple[int, int]:
    """Size (h, w) of the original scaled so that it covers the target (paper Algorithm 1).

    The image is scaled by ``max(target_h / h, target_w / w)``, so one side equals the target
    side and the other is at least as long; a square target makes this "short side = s".
    """
    (h, w), (th, tw) = original_size, target_size
    scale = max(th / h, tw / w)
    return max(th, round(h * scale)), max(tw, round(w * scale))


@dataclass(frozen=True)
class MicroCond:
    """How one training image was made: SDXL's c_size, c_crop and c_ar (paper section 2.2).

    Attributes:
        original_size: ``(height, width)`` of the image before any rescaling, in pixels, after
            EXIF orientation. For pre-resized shards this is the size recorded in the metadata.
        crop_top_left: ``(top, left)``: pixels cut from the top and from the left of the RESIZED
            image (the original scaled to cover ``target_size``) when it was cropped.
        target_size: ``(height, width)`` the model was trained at (the bucket's size).

    Integers only; sizes positive, offsets non-negative; anything else raises ``ValueError``
    naming the field. The record does not require the crop to lie inside the resized image,
    because inference deliberately asks for crops no training image had (paper Fig. 4); the
    data pipeline checks that with :meth:`check_crop_inside`.
    """

    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_size: tuple[int, int]

    def __post_init__(self) -> None:
        original = _check_pair("original_size", self.original_size, positive=True)
        crop = _check_pair("crop_top_left", self.crop_top_left, positive=False)
        target = _check_pair("target_size", self.target_size, positive=True)
        object.__setattr__(self, "original_size", original)
        object.__setattr__(self, "crop_top_left", crop)
        object.__setattr__(self, "target_size", target)

    @property
    def ids(self) -> tuple[int, int, int, int, int, int]:
        """The six ids in SDXL order: original h, w; crop top, left; target h, w."""
        return (*self.original_size, *self.crop_top_left, *self.target_size)

    def check_crop_inside(self) -> None:
        """Raise ``ValueError`` unless the target-sized crop lies inside the resized original."""
        rh, rw = resized_size(self.original_size, self.target_size)
        top, left = self.crop_top_left
        th, tw = self.target_size
        if top + th > rh or left + tw > rw:
            raise ValueError(
                f"MicroCond.crop_top_left {self.crop_top_left} puts a {th}x{tw} crop outside the "
                f"resized image {rh}x{rw} (original {self.original_size[0]}x{self.original_size[1]})"
            )


def stack_ids(conds: Sequence[MicroCond]) -> np.ndarray:
    """(B, 6) int64 ids in SDXL order: integers, so no bf16/fp16 rounding can reach them."""
    if len(conds) == 0:
        raise ValueError("stacking micro-condition ids needs at least one MicroCond, got an empty sequence")
    return np.array([c.ids for c in conds], dtype=np.int64).reshape(len(conds), 6)
