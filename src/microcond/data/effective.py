"""Effective original size: the size an image had before it was upscaled, measured from its pixels.

A file's size says how many pixels it has, not how much detail: a 400 px photo saved at 1600 px
claims 1600. :func:`estimate` measures, per axis, the factor ``s >= 1`` by which the luma was
upscaled and returns the effective size ``round(file size / s)``, with a confidence, plus the
JPEG quality read from the quantization tables (header only).

Method: :mod:`microcond.data.gridfit` (resampling periodicity, then least-squares fits of
upscale grids, both axes together, at a searched phase where a crop may have moved the grid).

Measured by ``benchmarks/bench_effective.py`` (400 upscaled photographs, its docstring): all
lossless and 84% of JPEG (q >= 75) images within 10%; AUC native/upscaled 0.98; 2% of the natives
called upscaled, 4% of them saved again as lossy WebP, 6% as JPEG at quality 40-74. The default
upscale of each library, lossless: Pillow 97%, libvips 98%, OpenCV 93%, ImageMagick 82% within
10%; cropped after the upscale (its grid's phase lost, searched here), lossless: 75-100% by
library, all formats 33-64%. On the emoji-like fakes of ``microcond experiment upscaled`` (bicubic,
a third under 48 px; 1,500 of its files): 99% within 10%, 6% of the natives (flat graphics) called
upscaled. The codec is read from the header (:mod:`microcond.data.codecs`): a JPEG's or lossy
WebP's blocks repeat like an upscale's grid and are allowed for, the more so the coarser a JPEG's
quantization.
Misses are smooth photographs (fog, sky, water) under JPEG noise: nothing there shows the
upscale, and the confidence says so; where only the periodicity shows it, an upscale by ``s`` and
one by ``s / (s - 1)`` leave the same trace and may be confused. The spectral fall-off of the
whitened luma spectrum was measured too and is not used: alone it cannot tell blur from an
upscale (half of the native photographs flagged). The upscales recognised are those of Pillow,
OpenCV, libvips and ImageMagick with their common kernels
(:data:`microcond.data.resampling.RESIZERS`, each checked against the library); another kernel,
or a cropped nearest-neighbour upscale in a lossy file, may be reported native or at another
factor (in a lossless file it is read off its runs of repeated pixels, :mod:`microcond.data.nearest`).
Cost on one core: about 60 full decodes for small files (0.2 MP, where the grid fits dominate:
about 4 files a second, 400-600 grids each); 2.6 for 3-15 MP files. Grids are kept across images (64 MiB
at most per process, :class:`microcond.data.resampling.ProjectionCache`): files of one size share
those their own periodicity does not choose.

Budget: at most ``max_pixels`` (default :data:`MAX_DECODED_PIXELS`) pixels are decoded. A larger
baseline or progressive JPEG or non-interlaced PNG is measured on its top rows only, decoded alone
(the decoder stops there; JPEG as luma only); other formats (WebP, interlaced PNG, GIF, TIFF)
larger than ``max_pixels`` are decoded whole up to :data:`MAX_WHOLE_PIXELS` and refused above it.
A progressive JPEG is decoded whole (libjpeg keeps every coefficient to output any row) up to
:data:`MAX_PROGRESSIVE_PIXELS`, and refused above it, before any decoding. A JPEG too small for
its own size (less than half a bit per 8x8 block: image data missing, which a decoder fills with
grey that would read as a huge upscale) is refused too, not measured.
At most 512 evenly spaced lines per axis are analysed. Numpy and Pillow only.

Work: ``max_grids`` bounds the grids fitted per image (:class:`microcond.data.gridaxis.Work`;
default no limit; the ``grids`` field says how many were). The strongest evidence is tested first;
where the next test would pass the budget, the verdict reached stands, and an image then called
native has confidence 0 (not everything was checked). Natives cost the most (every hypothesis
tested and rejected), so a small budget mostly turns unchecked upscales into natives of confidence 0:
with 300, 2.7x faster on the benchmark's photographs, 77% of lossless and 26% of JPEG upscales
within 10% (against 100% and 84%), no native called upscaled (``benchmarks/bench_effective.py``).
"""

from __future__ import annotations

import functools
import io
import os
import struct
import warnings
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image

from microcond.data.codecs import Codec, codec, jpeg_quality
from microcond.data.gridfit import measure

ESTIMATOR_VERSION = "14"  # bump when estimates change: scans then measure every file again
MAX_DECODED_PIXELS = 1 << 21  # pixels decoded per image at most (JPEG, PNG): 2 MP
MAX_WHOLE_PIXELS = 1 << 26  # formats decoded whole (WebP, GIF, TIFF, interlaced PNG): 64 MP
MAX_PROGRESSIVE_PIXELS = 1 << 24  # a progressive JPEG is decoded whole (every coefficient kept): 16 MP, <= 96 MiB
# A Huffman-coded JPEG spends at least one bit per 8x8 luma block on its DC code alone (two with
# the AC end-of-block code); half a bit per block leaves room for arithmetic coding's best case.
MIN_BITS_PER_BLOCK = 0.5
_SWAP = (5, 6, 7, 8)  # EXIF orientations that swap height and width

@dataclass(frozen=True)
class Effective:
    """What :func:`estimate` measured; sizes after EXIF orientation, like the scan's.

    ``height``/``width``: effective size, ``round(file size / scale)``, 1 <= it <= file size.
    ``scale``: estimated upscaling factor per axis (height, width), 1.0 for native.
    ``confidence``: 0 (a guess: flat or tiny image) to 1 (a resampling grid fits exactly).
    ``jpeg_quality``: IJG quality 1-100 whose tables are nearest to the file's; None if not JPEG.
    ``file_size``: the file's (height, width) after orientation; ``decoded_pixels``: pixels decoded
    to measure, at most the budget for JPEG and PNG; ``grids``: upscale grids fitted (the work,
    :class:`microcond.data.gridaxis.Work`; at most ``max_grids``).
    """

    height: int
    width: int
    confidence: float
    jpeg_quality: int | None
    scale: tuple[float, float]
    file_size: tuple[int, int]
    decoded_pixels: int
    grids: int = 0



def _name(source: object) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source)  # type: ignore[arg-type]


def _idat(fp: BinaryIO, offset: int) -> Iterator[bytes]:
    """The PNG image data from the first IDAT chunk (header at ``offset - 8``), chunk by chunk."""
    fp.seek(offset - 8)
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        if kind != b"IDAT":
            return
        yield fp.read(length)
        fp.read(4)  # CRC


def _decode_rows(image: Image.Image, rows: int) -> Image.Image:
    """The top ``rows`` rows of a lazily opened single-tile JPEG or PNG, decoded alone.

    Pillow's decoders stop once the tile's extent is filled; libjpeg then reports the unread
    rest as an error, which is expected here. Running out of data inside the band is not.
    """
    (codec, _, offset, args), = image.tile
    band = Image.new(image.mode, (image.width, rows))
    decoder = Image._getdecoder(image.mode, codec, args, image.decoderconfig)
    decoder.setimage(band.im, (0, 0, image.width, rows))
    image.fp.seek(offset)
    chunks = _idat(image.fp, offset) if image.format == "PNG" else iter(functools.partial(image.fp.read, 1 << 16), b"")
    data, done = b"", False
    try:
        for chunk in chunks:
            data += chunk
            consumed, _ = decoder.decode(data)
            if consumed < 0:
                done = True
                break
            data = data[consumed:]
    finally:
        decoder.cleanup()
    if not done:
        raise ValueError("the file ends inside the rows measured (truncated)")
    if image.mode == "P":
        band.putpalette(image.getpalette() or [])
    return band


def _orientation(image: Image.Image) -> int:
    """EXIF orientation as the scan reads it, without decoding: Pillow's ``getexif`` decodes a
    PNG to look for an eXIf chunk after the image data, found here in the file's tail instead."""
    if image.format == "TIFF":  # Pillow reports TIFF sizes upright already
        return 1
    if image.format != "PNG" or "exif" in image.info:
        return image.getexif().get(0x0112, 1)
    image.fp.seek(max(0, image.fp.seek(0, os.SEEK_END) - 4096))
    tail = image.fp.read()
    at = tail.rfind(b"eXIf")
    if at < 4:
        return 1
    exif = Image.Exif()
    exif.load(tail[at + 4 : at + 4 + struct.unpack(">I", tail[at - 4 : at])[0]])
    return exif.get(0x0112, 1)


def _luma(image: Image.Image) -> np.ndarray:
    """Luma (ITU-R 601, as Pillow's "L") in 0..255 as float32 (H, W); 16-bit modes scaled down."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return np.asarray(image.convert("F"), np.float32) * np.float32(255 / (65535 if image.mode != "F" else 1))
    return np.asarray(image if image.mode == "L" else image.convert("L"), np.float32)


def _decode(source: str | os.PathLike | bytes, max_pixels: int) -> tuple[np.ndarray, tuple[int, int], int, int | None, Codec]:
    """(luma band, file size (h, w) before orientation, EXIF orientation, JPEG quality, codec)."""
    name = _name(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"{name}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as err:
        raise ValueError(f"{name}: not a readable image ({type(err).__name__}: {err})") from None
    with image:
        width, height = image.size
        try:  # a header that opened may still fail to decode: the same one-line error
            if image.format == "JPEG":
                _check_jpeg(image, _file_bytes(source))
            quality = jpeg_quality(image)
            compression = codec(image, quality)
            orientation = _orientation(image)
            partial = (image.format in ("JPEG", "PNG") and len(image.tile) == 1 and not image.info.get("interlace")
                       and image.mode != "CMYK")
            if image.format == "JPEG" and partial:
                image.draft("L", image.size)  # luma straight from libjpeg, no scaling
            if partial and width * height > max_pixels:
                luma = _luma(_decode_rows(image, max(1, min(height, max_pixels // width))))
            elif width * height > MAX_WHOLE_PIXELS:
                raise ValueError(f"{image.format} of {width}x{height} (w x h) cannot be measured in part and is above "
                                 f"{MAX_WHOLE_PIXELS} pixels")
            else:
                image.load()
                luma = _luma(image)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        except (OSError, SyntaxError, EOFError, IndexError, KeyError, TypeError, struct.error) as err:
            raise ValueError(f"{name}: cannot decode ({type(err).__name__}: {err})") from None
    return luma, (height, width), orientation if orientation in range(1, 9) else 1, quality, compression


def _file_bytes(source: str | os.PathLike | bytes) -> int:
    return len(source) if isinstance(source, (bytes, bytearray)) else os.path.getsize(source)


def _check_jpeg(image: Image.Image, size: int) -> None:
    """Refuse, before decoding, a JPEG that cannot be measured within the budget or whose image
    data is mostly missing (module doc)."""
    width, height = image.size
    if (image.info.get("progressive") or image.info.get("progression")) and width * height > MAX_PROGRESSIVE_PIXELS:
        buffer = width * height * 2 * len(image.getbands())  # 16-bit coefficients of every component, at most
        raise ValueError(f"progressive JPEG of {width}x{height} (w x h): libjpeg keeps all of its coefficients (up to "
                         f"{buffer / 2**20:,.0f} MiB) to decode any row, above the budget of {MAX_PROGRESSIVE_PIXELS:,} pixels; not measured")
    blocks = -(-width // 8) * -(-height // 8)
    if size < blocks * MIN_BITS_PER_BLOCK / 8:
        raise ValueError(f"JPEG of {width}x{height} (w x h) in {size:,} bytes, below the {blocks * MIN_BITS_PER_BLOCK / 8:,.0f} that "
                         "its 8x8 blocks need at the least: its image data is missing (truncated), and a decoder would fill it grey")


def estimator_id(max_grids: int | None = None) -> str:
    """What a scan's index records of the estimator, so that a change of either measures again:
    :data:`ESTIMATOR_VERSION`, and the work budget when there is one."""
    return ESTIMATOR_VERSION if max_grids is None else f"{ESTIMATOR_VERSION}, at most {max_grids} grids"


def check_max_grids(max_grids: int | None) -> None:
    """Raise ``ValueError`` (one line) unless ``max_grids`` is None or a positive integer."""
    if max_grids is not None and (isinstance(max_grids, bool) or not isinstance(max_grids, int) or max_grids < 1):
        raise ValueError(f"max_grids must be a positive integer or None, got {max_grids!r}")


def estimate(source: str | os.PathLike | bytes, *, max_pixels: int = MAX_DECODED_PIXELS, max_grids: int | None = None) -> Effective:
    """Effective size, confidence and JPEG quality of one image file (path or bytes).

    ``max_grids`` bounds the work per image (module doc, "Work"; None: no limit).
    Raises ``ValueError`` with one line naming the file for anything unreadable or undecodable.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    check_max_grids(max_grids)
    luma, (height, width), orientation, quality, compression = _decode(source, max_pixels)
    (scale_h, scale_w), (confidence_h, confidence_w), grids = measure(luma, compression, (height, width), max_grids)
    if orientation in _SWAP:
        height, width, scale_h, scale_w = width, height, scale_w, scale_h
    return Effective(
        height=min(height, max(1, round(height / scale_h))),
        width=min(width, max(1, round(width / scale_w))),
        confidence=round(min(confidence_h, confidence_w), 3),
        jpeg_quality=quality,
        scale=(round(float(scale_h), 4), round(float(scale_w), 4)),
        file_size=(height, width),
        decoded_pixels=int(luma.size),
        grids=grids,
    )
