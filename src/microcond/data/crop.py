"""Decode, resize and crop one training image, returning its pixels and its ``MicroCond``.

Paper Algorithm 1, generalised to buckets: record the original size; resize so the image
covers the target (one side equal, :func:`microcond.cond.embedder.resized_size`); pick the crop
offset uniformly along the axis with slack (the other offset is 0); crop. A horizontal flip
is applied to the resized image BEFORE the offset is chosen, so the recorded
``crop_top_left`` is true for the returned pixels (diffusers #6234 recorded it for the unflipped
image). Numpy and Pillow only; no torch code here.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zlib
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image

from microcond.cond.record import MicroCond, resized_size

Size = tuple[int, int]  # (height, width)
Source = str | os.PathLike | bytes | BinaryIO

# Pillow's own limit (about 89.5 M pixels): above it Pillow warns, and at twice it refuses.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
CROP_MODES = ("random", "center")

# EXIF orientation -> the transpose that shows the image upright (the table of Pillow's
# ImageOps.exif_transpose). Orientations 5-8 swap height and width.
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What a corrupt or truncated file raises inside Pillow's decoders.
# (Pillow's TIFF and EXIF readers also raise IndexError, KeyError, TypeError on broken tags.)
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
    struct.error, zlib.error, Image.DecompressionBombError,
)  # fmt: skip
# Aspect mismatch allowed between caller-given original_size and the file's pixels, on top of
# one pixel of rounding: pre-resized shards keep the aspect up to rounding.
ASPECT_TOLERANCE = 0.01


def _name(source: Source) -> str:
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)  # type: ignore[return-value]
    return getattr(source, "name", "<stream>")


def _open(source: Source, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and check the pixel count; ValueError on anything unreadable."""
    name = _name(source)
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            # Pillow's "possible decompression bomb" warning becomes our one clear error below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp)
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"{name}: not a recognised image format (or not an image)") from None
    except _DECODE_ERRORS as err:
        raise ValueError(f"{name}: not a readable image ({type(err).__name__}: {err})") from None
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise ValueError(f"{name}: image has an empty size {height}x{width} (h x w)")
    if width * height > max_pixels:
        image.close()
        raise ValueError(
            f"{name}: image has {width * height:,} pixels ({height}x{width}), more than "
            f"max_pixels={max_pixels:,}; raise max_pixels (and PIL.Image.MAX_IMAGE_PIXELS) to accept it"
        )
    return image


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) still to apply after loading, as Pillow reads it.

    1 when absent or invalid, and for TIFF: Pillow's TIFF plugin already reports the upright
    size and transposes on load (the scan's rule too).
    """
    if image.format == "TIFF":
        return 1
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        return 1  # a broken EXIF block does not make the pixels unreadable
    return value if value in _ORIENT else 1


def oriented_size(image: Image.Image) -> Size:
    """``(height, width)`` of an opened (not yet loaded) image as displayed, after EXIF orientation."""
    width, height = image.size
    return (width, height) if exif_orientation(image) in (5, 6, 7, 8) else (height, width)


def open_image(source: Source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image fully, upright per its EXIF orientation (the same rule the scan records).

    Raises ``ValueError`` naming the file and the reason for a missing, unrecognised, corrupt,
    truncated or too large file. Use :func:`load_resized` for training: it decodes large JPEGs
    at reduced scale.
    """
    with _open(source, max_pixels) as image:
        orientation = exif_orientation(image)
        try:
            image.load()
        except _DECODE_ERRORS as err:
            raise ValueError(f"{_name(source)}: cannot decode ({type(err).__name__}: {err})") from None
        method = _ORIENT.get(orientation)
        return image.transpose(method) if method is not None else image.copy()


def _check_background(background: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(background) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in background):
        raise ValueError(f"background must be an (r, g, b) triple of integers in 0..255, got {background!r}")
    return tuple(int(v) for v in background)  # type: ignore[return-value]


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, the same way every time.

    - Alpha (RGBA, LA, PA, premultiplied, or P/L/RGB with a ``transparency`` entry) is
      composited over ``background``: ``out = a * pixel + (1 - a) * background``.
    - 16-bit and 32-bit integer grey (I;16*, I) is read as 0..65535 and scaled by 255/65535.
    - Float grey (F) is read as 0..255, Pillow's own convention, clipped and rounded.
    - CMYK, YCbCr, L, 1 and P use Pillow's ``convert("RGB")``; ICC profiles are not applied.
    """
    background = _check_background(background)
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        out = Image.new("RGB", rgba.size, background)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if mode == "RGB":
        return image
    if mode == "I" or mode.startswith("I;16"):
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)  # (H, W)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))  # (H, W)
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ValueError(f"cannot convert image mode {mode!r} to RGB ({err})") from None


def load_resized(
    source: Source,
    target_size: Size,
    *,
    original_size: Size | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    fast: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, Size]:
    """Decode, orient, convert to RGB and resize so the image covers ``target_size``.

    Returns ``(pixels, original_size)``: read-only uint8 ``(H, W, 3)`` with ``(H, W) ==
    resized_size(original_size, target_size)``, and the original ``(h, w)``: the caller's
    ``original_size`` when given (pre-resized shards' metadata), else the file's oriented size.
    A resized image above ``max_pixels`` (an extreme panorama in a square bucket) is refused.

    With ``fast`` a JPEG is decoded at reduced scale (libjpeg DCT scaling via ``Image.draft``)
    to at least twice the resized size, then resized with Lanczos like the full decode.
    """
    target_size = MicroCond((1, 1), (0, 0), target_size).target_size  # validated by MicroCond
    name = _name(source)
    with _open(source, max_pixels) as image:
        orientation = exif_orientation(image)
        swap = orientation in (5, 6, 7, 8)
        file_w, file_h = image.size  # read BEFORE draft, which shrinks image.size
        file_size = (file_w, file_h) if swap else (file_h, file_w)  # oriented (h, w)
        if original_size is None:
            original_size = file_size
        else:
            original_size = MicroCond(original_size, (0, 0), target_size).original_size
            mismatch = abs(math.log((original_size[0] * file_size[1]) / (original_size[1] * file_size[0])))
            if mismatch > 1.0 / min(file_size) + ASPECT_TOLERANCE:
                raise ValueError(
                    f"{name}: original_size {original_size} (h, w) from metadata has another aspect "
                    f"than the image's pixels {file_size}; were the pixels cropped or padded, or the "
                    f"metadata's width and height swapped? Pass original_size=None to use the file's size"
                )
        out_h, out_w = resized_size(original_size, target_size)  # oriented frame
        if out_h * out_w > max_pixels:
            raise ValueError(
                f"{name}: covering target {target_size} needs a {out_h}x{out_w} resize of the "
                f"{original_size[0]}x{original_size[1]} original, more than max_pixels={max_pixels:,}; "
                f"use buckets with a wider aspect range (make_buckets max_aspect) for such images"
            )
        if swap:
            out_h, out_w = out_w, out_h  # the file's stored frame, before transpose
        box: tuple[float, float, float, float] = (0.0, 0.0, float(file_w), float(file_h))
        if fast:
            # JPEG (and MPO): DCT scaling by 1/2, 1/4 or 1/8 while keeping >= 2x the output, so
            # Lanczos sees enough pixels to match a full decode (>= 40 dB, tests/test_crop.py).
            # Other formats' draft does nothing and returns None.
            drafted = image.draft(image.mode, (2 * out_w, 2 * out_h))
            if drafted is not None:
                box = drafted[1]  # the original extent in decoded pixels (ceil sizes are padded)
        try:
            image.load()
        except _DECODE_ERRORS as err:
            raise ValueError(f"{name}: cannot decode ({type(err).__name__}: {err})") from None
        try:
            rgb = to_rgb(image, background)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        resized = rgb.resize((out_w, out_h), Image.Resampling.LANCZOS, box=box)
    method = _ORIENT.get(orientation)
    if method is not None:
        resized = resized.transpose(method)
    pixels = np.asarray(resized)  # (H, W, 3) uint8
    return pixels, original_size


def crop(
    resized: np.ndarray,
    original_size: Size,
    target_size: Size,
    rng: np.random.Generator,
    *,
    mode: str = "random",
    flip: bool = False,
) -> tuple[np.ndarray, MicroCond]:
    """Crop a resized image to ``target_size`` (paper Algorithm 1); return pixels and conditions.

    ``resized`` is uint8 ``(H, W, 3)`` with ``(H, W) == resized_size(original_size,
    target_size)``. "random" draws one offset uniformly along the axis with slack (the other is
    0; one integer is drawn from ``rng`` even without slack, so the stream never depends on the
    shape); "center" takes ``floor(slack / 2)`` and draws nothing. ``flip`` mirrors the image
    horizontally before the offset is chosen, so the returned ``crop_top_left`` is true for the
    returned pixels. Returns a C-contiguous uint8 ``(th, tw, 3)`` copy and its ``MicroCond``.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    checked = MicroCond(original_size, (0, 0), target_size)  # validates both sizes
    original_size, target_size = checked.original_size, checked.target_size
    if resized.ndim != 3 or resized.shape[2] != 3 or resized.dtype != np.uint8:
        raise ValueError(f"crop expects uint8 pixels of shape (H, W, 3), got {resized.dtype} {resized.shape}")
    target_h, target_w = target_size
    expected = resized_size(original_size, target_size)
    if resized.shape[:2] != expected:
        raise ValueError(
            f"crop: resized image is {resized.shape[0]}x{resized.shape[1]} but original {original_size} "
            f"covering target {target_size} must be {expected[0]}x{expected[1]}; resize with load_resized"
        )
    if flip:
        resized = resized[:, ::-1]  # (H, W, 3) view; offsets below are in the flipped frame
    slack_h, slack_w = expected[0] - target_h, expected[1] - target_w
    assert slack_h == 0 or slack_w == 0, "resized_size makes one side equal to the target"
    if mode == "random":
        offset = int(rng.integers(0, slack_h + slack_w + 1))
        top, left = (offset, 0) if slack_h else (0, offset)
    else:
        top, left = slack_h // 2, slack_w // 2
    pixels = resized[top : top + target_h, left : left + target_w].copy()  # (th, tw, 3), C order
    cond = MicroCond(original_size, (top, left), target_size)
    cond.check_crop_inside()
    return pixels, cond


def decode_crop(
    source: Source,
    target_size: Size,
    rng: np.random.Generator,
    *,
    mode: str = "random",
    flip_probability: float = 0.0,
    original_size: Size | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    fast: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, MicroCond]:
    """One training sample: :func:`load_resized`, a flip drawn from ``rng``, then :func:`crop`.

    ``rng`` is drawn from in a fixed order (flip, then offset), so a sample is a pure function
    of the file and the generator's state.
    """
    if not 0.0 <= flip_probability <= 1.0:
        raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability!r}")
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    resized, original_size = load_resized(
        source, target_size, original_size=original_size, background=background, fast=fast, max_pixels=max_pixels
    )
    flip = bool(rng.random() < flip_probability)
    return crop(resized, original_size, target_size, rng, mode=mode, flip=flip)
