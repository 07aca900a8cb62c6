"""Effective original size: the size an image had before it was upscaled, measured from its pixels.

A file's size says how many pixels it has, not how much detail: a 400 px photo saved at 1600 px
claims 1600. :func:`estimate` measures, per axis, the factor ``s >= 1`` by which the luma was
upscaled and returns the effective size ``round(file size / s)``, with a confidence, plus the
JPEG quality read from the quantization tables (header only).

Method, per axis (rows for the width, columns for the height):

1. Resampling periodicity. Resizing by ``s`` places output pixels at a phase that repeats every
   ``s`` pixels, on every row alike, so the row-average of ``|second difference|`` (and of
   ``|first difference|``: nearest neighbour near 2x) is periodic and its spectrum peaks at ``1/s``
   folded into [0, 1/2] (Gallagher 2005; Kirchner 2008). A peak at ``f`` gives the pair
   ``1/(1-f)``, ``1/f``. JPEG's 8-px block pattern is removed first (per-phase means over 64-px
   windows) and its frequencies k/8 are ignored.
2. Re-interpolation. For each candidate original length ``n0`` (a peak's, one pixel either side,
   and 2x, 3x, 4x: an exact 2x leaves no periodicity, its phases being mirror images) and each
   common kernel (nearest, bilinear, bicubic a=-0.5, Lanczos-3 on the centre-aligned grid of Pillow
   and most resizers, :mod:`microcond.data.resampling`), lines of pixels are projected on the span
   of the upscale matrix by least squares in 48-px windows. An upscaled line lies in that span up
   to rounding and compression noise, and the same grid shifted by half an original pixel fits
   worse; a native line fits both equally badly. The candidate whose aligned fit beats its shifted
   fit by :data:`_GAIN` wins; among those that fit about as well per degree of freedom the coarsest
   is the original (a finer grid contains a coarser one).

Measured by ``benchmarks/bench_effective.py`` (400 upscaled photographs, its docstring): 89% of
lossless and 52% of JPEG (q >= 75) images within 10%; AUC native/upscaled 0.97; 3% of natives
called upscaled. Most misses are smooth photographs (fog, sky, water) and JPEG, whose noise hides
the resampling periodicity: nothing there shows the upscale, and the confidence says so. The
spectral fall-off of the whitened luma spectrum was measured too and is not used: alone it cannot
tell blur from an upscale (half of the native photographs flagged), and as a fallback it added a
few percent recall for 2-6% more natives called upscaled. Only centre-aligned upscales by the four
kernels are recognised: another kernel, or an upscale cropped afterwards, may be reported native.
Cost on one core: about 17 full decodes for small files (0.2 MP); 0.8 of one for 3-15 MP files.

Budget: at most ``max_pixels`` (default :data:`MAX_DECODED_PIXELS`) pixels are decoded. A larger
baseline or progressive JPEG or non-interlaced PNG is measured on its top rows only, decoded alone
(the decoder stops there; JPEG as luma only); other formats (WebP, interlaced PNG, GIF, TIFF)
larger than ``max_pixels`` are decoded whole up to :data:`MAX_WHOLE_PIXELS` and refused above it.
At most :data:`_ANALYSED` pixels per axis (evenly spaced lines) are analysed. Numpy and Pillow only.
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

from microcond.data.resampling import NAMES, grids, misfits, window_starts

ESTIMATOR_VERSION = "2"  # bump when estimates change: scans then measure every file again
MAX_DECODED_PIXELS = 1 << 21  # pixels decoded per image at most (JPEG, PNG): 2 MP
MAX_WHOLE_PIXELS = 1 << 26  # formats decoded whole (WebP, GIF, TIFF, interlaced PNG): 64 MP
MIN_SIDE = 48  # shorter axes are not measured (factor 1, confidence 0)
_ANALYSED = 1 << 19  # pixels analysed per axis at most (evenly spaced lines of the decoded band)
_SWAP = (5, 6, 7, 8)  # EXIF orientations that swap height and width
_WINDOW, _WINDOWS, _ROWS = 48, 3, 48  # re-interpolation: window length in pixels, windows, rows sampled
_GAIN = 1.2  # aligned fit this much better than the shifted one: upscaled
_GAIN_FIXED = 1.5  # the same for factors 2, 3, 4 tried without a periodic peak (symmetric phases)
_NESTED = 1.3  # a coarser grid fitting within this factor of the best one is preferred
_NOISE = 0.3  # grey levels added to both residuals: 8-bit rounding (1/sqrt(12)) and below
# IJG (libjpeg) base tables at quality 50, natural order (ITU-T T.81 Annex K).
_IJG = (np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                  14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                  49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]),
        np.array([17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + [47, 66]
                 + [99] * 38))  # fmt: skip


@dataclass(frozen=True)
class Effective:
    """What :func:`estimate` measured; sizes after EXIF orientation, like the scan's.

    ``height``/``width``: effective size, ``round(file size / scale)``, 1 <= it <= file size.
    ``scale``: estimated upscaling factor per axis (height, width), 1.0 for native.
    ``confidence``: 0 (a guess: flat or tiny image) to 1 (a resampling grid fits exactly).
    ``jpeg_quality``: IJG quality 1-100 whose tables are nearest to the file's; None if not JPEG.
    ``file_size``: the file's (height, width) after orientation; ``decoded_pixels``: pixels decoded
    to measure, at most the budget for JPEG and PNG.
    """

    height: int
    width: int
    confidence: float
    jpeg_quality: int | None
    scale: tuple[float, float]
    file_size: tuple[int, int]
    decoded_pixels: int



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


def _decode(source: str | os.PathLike | bytes, max_pixels: int) -> tuple[np.ndarray, tuple[int, int], int, int | None]:
    """(luma band, file size (h, w) before orientation, EXIF orientation, JPEG quality)."""
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
            quality = jpeg_quality(image)
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
    return luma, (height, width), orientation if orientation in range(1, 9) else 1, quality


def jpeg_quality(image: Image.Image) -> int | None:
    """The IJG quality (1-100) whose scaled standard tables are nearest to this JPEG's; header only."""
    tables = getattr(image, "quantization", None) if image.format == "JPEG" else None
    if not tables:
        return None
    found = [np.asarray(tables[i], np.float64) for i in sorted(tables)[:2]]
    qualities = np.arange(1, 101)
    scale = np.where(qualities < 50, 5000 // qualities, 200 - 2 * qualities)[:, None]  # libjpeg jcparam.c
    error = np.zeros(len(qualities))
    for table, base in zip(found, _IJG):
        scaled = np.clip((base[None, :] * scale + 50) // 100, 1, 255)  # (100, 64)
        error += np.abs(np.log(scaled / np.maximum(table[None, :], 1))).mean(axis=1)
    return int(qualities[np.argmin(error)])



def _peaks(y: np.ndarray, jpeg: bool, top: int = 2, least: float = 15.0) -> list[float]:
    """Frequencies (cycles/pixel, 0.1..0.5) of the strongest periodic peaks of the mean |second
    difference| and of the mean |first difference| along the lines ``y`` (count, length) (a
    nearest-neighbour upscale near 2x repeats pixel pairs: only the first difference sees it), each
    at least ``least`` times the median of its spectrum."""
    found: list[float] = []
    for difference in (np.abs(y[:, :-2] - 2 * y[:, 1:-1] + y[:, 2:]), np.abs(np.diff(y, axis=1))):
        d = difference.mean(axis=0) + 1e-3  # (n,)
        m = d / np.convolve(np.pad(d, 7, mode="reflect"), np.ones(15) / 15, mode="valid") - 1  # relative modulation
        n = len(m)
        if jpeg:  # remove the 8-px block pattern, window by window (its strength follows the content)
            phase = (np.arange(n) + 1) % 8
            for lo in range(0, n, 64):
                part = slice(lo, lo + 64)
                means = np.bincount(phase[part], m[part], 8) / np.maximum(np.bincount(phase[part], None, 8), 1)
                m[part] -= means[phase[part]]
        power = np.abs(np.fft.rfft(m * np.hanning(n), 4 * n)) ** 2
        f = np.arange(len(power)) / (4 * n)
        keep = f >= 0.1
        if jpeg:
            keep &= np.min(np.abs(f[:, None] - np.arange(1, 5) / 8), axis=1) > 2.0 / n
        f, power = f[keep], power[keep]
        floor, mine = np.median(power), []
        for i in np.argsort(power)[::-1]:
            if len(mine) == top or power[i] < least * floor:
                break
            if all(abs(f[i] - g) > 3.0 / n for g in mine + found):
                mine.append(float(f[i]))
        found += mine
    return found


def _padded(matrices: list[np.ndarray]) -> np.ndarray:
    width = max(m.shape[2] for m in matrices)  # zero columns change no fit
    return np.concatenate([np.pad(m, ((0, 0), (0, 0), (0, width - m.shape[2]))) for m in matrices])


def _grid_fit(y: np.ndarray, jpeg: bool, length: int) -> tuple[float, float]:
    """(factor, gain) of the best-fitting upscale grid along the lines ``y`` (count, measured), the
    first ``measured`` pixels of lines ``length`` long (a decoded band); (1.0, gain) if none fits."""
    rows = y[np.linspace(0, y.shape[0] - 1, min(_ROWS, y.shape[0])).astype(int)].T.astype(np.float32)  # (measured, R)
    window = min(_WINDOW, y.shape[1] - 16)
    starts = window_starts(y.shape[1], window, _WINDOWS)
    # Each periodic peak gives two factors, each an original length n0 known within about a pixel.
    families = {round(length / s): _GAIN_FIXED for s in (2.0, 3.0, 4.0)}
    families.update({round(length / s): _GAIN for f in _peaks(y, jpeg) for s in (1 / (1 - f), 1 / f)})
    # Too fine a grid has as many unknowns as pixels and fits anything: not tested.
    usable = lambda n0: 8 <= n0 and n0 * window < (window - 8) * length  # noqa: E731
    centres = np.array([c for c in sorted(families) if usable(c)])
    if not len(centres):
        return 1.0, 1.0
    # Each n0 with every kernel; a peak-derived n0 also one original pixel either side (at a wrong
    # n0 the right kernel need not fit best, so every kernel again).
    aligned = misfits(rows, _padded([grids(length, centres, k, starts, window) for k in NAMES]), starts)
    aligned = aligned.reshape(len(NAMES), len(centres))
    best = {int(c): (float(aligned[:, i].min()), int(aligned[:, i].argmin()), int(c)) for i, c in enumerate(centres)}
    near = [(int(c), int(c) + d, int(k)) for i, c in enumerate(centres) if families[c] == _GAIN
            for k in range(len(NAMES)) for d in (-1, 1) if usable(c + d)]
    for k in {k for _, _, k in near}:
        chosen = [(c, n0) for c, n0, kk in near if kk == k]
        for (c, n0), fit in zip(chosen, misfits(rows, grids(length, np.array([n0 for _, n0 in chosen]), NAMES[k], starts, window), starts)):
            if fit < best[c][0]:
                best[c] = (float(fit), k, n0)
    shifted = {}
    for k in {k for _, k, _ in best.values()}:  # the winners shifted by half an original pixel
        chosen = [n0 for _, kk, n0 in best.values() if kk == k]
        shifted.update(zip(chosen, misfits(rows, grids(length, np.array(chosen), NAMES[k], starts, window, 0.5), starts)))
    scored = [((shifted[n0] + _NOISE) / (fit + _NOISE), length / n0, (fit + _NOISE) / (1 - n0 / length) ** 0.5, families[c])
              for c, (fit, _, n0) in best.items()]  # third: misfit per degree of freedom left, comparable across grids
    gain = max(g for g, _, _, _ in scored)
    fitting = [(s, fit) for g, s, fit, least in scored if g >= least]
    if not fitting:
        return 1.0, gain
    # A finer grid also contains a coarser one: the coarsest grid that fits about as well is the original.
    least = min(fit for _, fit in fitting)
    return max(s for s, fit in fitting if fit <= _NESTED * least), gain


_N_FFT = 128  # Welch segment length: 64 frequency bins


def _spectrum(y: np.ndarray) -> np.ndarray:
    """Welch power spectrum of the first difference along the lines ``y`` (whitens f^-2 images). (F,)"""
    rows = y[np.linspace(0, y.shape[0] - 1, min(128, y.shape[0])).astype(int)]
    d = np.diff(rows, axis=1)
    segments = d[:, : d.shape[1] // _N_FFT * _N_FFT].reshape(-1, _N_FFT)
    segments = (segments - segments.mean(axis=1, keepdims=True)) * np.hanning(_N_FFT)
    return (np.abs(np.fft.rfft(segments, axis=1)) ** 2).mean(axis=0)[1:] + 1e-9


def _detail(power: np.ndarray) -> float:
    """Share of the low-band level that remains near Nyquist above 8-bit rounding noise, 0..1:
    how much a native verdict can be trusted (a flat image could hide any upscale)."""
    f = np.arange(1, len(power) + 1) / _N_FFT
    rounding = 4 * np.sin(np.pi * f) ** 2 / 12 * float((np.hanning(_N_FFT) ** 2).sum())
    high = max(float((power - rounding)[f >= 0.35].mean()), 0.0)
    return min(1.0, high / float(power[(f >= 0.05) & (f <= 0.15)].mean()) / 0.3)


def measure_axis(luma: np.ndarray, axis: int, jpeg: bool = False, length: int | None = None) -> tuple[float, float]:
    """Upscaling factor (>= 1) and confidence (0..1) of a luma array (H, W) along ``axis`` (0: the
    height, measured down the columns; 1: the width, along the rows).

    Args:
        length: the image's size on ``axis`` when ``luma`` is its top-left part (a decoded band):
            upscale grids are laid over the whole image, as the resizer did.
    """
    if luma.shape[axis] < MIN_SIDE or luma.shape[1 - axis] < 8:
        return 1.0, 0.0
    y = np.moveaxis(luma, axis, 1)
    if y.size > _ANALYSED:  # evenly spaced lines: the work per axis is bounded
        y = y[np.linspace(0, len(y) - 1, max(8, _ANALYSED // y.shape[1])).astype(int)]
    factor, gain = _grid_fit(y, jpeg, length or y.shape[1])
    if factor > 1.0:
        return factor, min(1.0, 1.3 - 1.0 / gain**2)  # gain 1.2: 0.61, 1.5: 0.86, 1.8: 1.0
    if y.shape[1] <= _N_FFT:
        return 1.0, 0.0
    return 1.0, _detail(_spectrum(y))


def estimate(source: str | os.PathLike | bytes, *, max_pixels: int = MAX_DECODED_PIXELS) -> Effective:
    """Effective size, confidence and JPEG quality of one image file (path or bytes).

    Raises ``ValueError`` with one line naming the file for anything unreadable or undecodable.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    luma, (height, width), orientation, quality = _decode(source, max_pixels)
    jpeg = quality is not None
    scale_h, confidence_h = measure_axis(luma, 0, jpeg, height)
    scale_w, confidence_w = measure_axis(luma, 1, jpeg, width)
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
    )
