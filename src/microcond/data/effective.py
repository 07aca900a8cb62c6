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
import math
import os
import struct
import warnings
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image

from microcond.data.resampling import NAMES, grids, misfits, scatter, window_starts

ESTIMATOR_VERSION = "3"  # bump when estimates change: scans then measure every file again
MAX_DECODED_PIXELS = 1 << 21  # pixels decoded per image at most (JPEG, PNG): 2 MP
MAX_WHOLE_PIXELS = 1 << 26  # formats decoded whole (WebP, GIF, TIFF, interlaced PNG): 64 MP
MIN_SIDE = 24  # shorter axes are not measured (factor 1, confidence 0)
_LINES = 512  # lines analysed per axis at most (evenly spaced in the decoded band)
_WHOLE = 96  # axes up to this long are fitted whole, every original length tried
_SWAP = (5, 6, 7, 8)  # EXIF orientations that swap height and width
_WINDOW, _WINDOWS = 48, 8  # re-interpolation: window length in pixels, windows at most
_GAIN = 1.2  # aligned fit this much better than the shifted one: upscaled
_GAIN_FIXED = 1.5  # the same for factors 2, 3, 4 tried without a periodic peak (symmetric phases)
_GAIN_ALL = 1.3  # the same on a short axis, where every original length is tried
_GAIN_JOINT = 1.1  # the same for the other axis's factor on an axis that found none
_GAIN_ALONE = 2.0  # the same for an upscale of one axis that the other contradicts
_AGREE = 0.095  # factors within 10% agree
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


def _ijg_table(quality: int | np.ndarray, table: int) -> np.ndarray:
    """libjpeg's quantization table (0: luma, 1: chroma) at ``quality``, as jcparam.c scales it."""
    scale = np.where(quality < 50, 5000 // quality, 200 - 2 * quality)
    return np.clip((_IJG[table] * scale + 50) // 100, 1, 255)


def jpeg_quality(image: Image.Image) -> int | None:
    """The IJG quality (1-100) whose scaled standard tables are nearest to this JPEG's; header only."""
    tables = getattr(image, "quantization", None) if image.format == "JPEG" else None
    if not tables:
        return None
    found = [np.asarray(tables[i], np.float64) for i in sorted(tables)[:2]]
    qualities = np.arange(1, 101)
    error = np.zeros(len(qualities))
    for i, table in enumerate(found):
        scaled = _ijg_table(qualities[:, None], i)  # (100, 64)
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
    width = max(m.shape[2] for m in matrices)  # zero columns are left out of every fit
    return np.concatenate([np.pad(m, ((0, 0), (0, 0), (0, width - m.shape[2]))) for m in matrices])


@dataclass(frozen=True)
class _Axis:
    """One axis prepared for grid fits: its lines (count, measured), mean removed, the windows
    tested and their scatter matrices. ``length``: the axis's size in the file (a decoded band
    measures only the first ``measured`` pixels of it)."""

    lines: np.ndarray
    length: int
    quality: int | None  # JPEG quality, None for lossless files
    starts: np.ndarray
    window: int
    scatters: np.ndarray

    @property
    def whole(self) -> bool:
        return self.window == self.length

    @property
    def limit(self) -> float:
        """Largest misfit an upscale may leave on a short axis (RMS grey levels): twice the 8-bit
        rounding, or a quarter of the RMS quantization step of the file's JPEG luma table."""
        if self.quality is None:
            return 2 * _NOISE
        return max(2 * _NOISE, 0.25 * float(np.sqrt((_ijg_table(self.quality, 0) ** 2).mean() / 12)))

    def usable(self, n0: int) -> bool:
        """Too fine a grid leaves too few degrees of freedom to tell fits apart: not tested."""
        return 4 <= n0 and n0 * self.window < (self.window - 8) * self.length

    def fits(self, originals: list[int], kernels: tuple[str, ...] = NAMES, shift: float = 0.0) -> np.ndarray:
        """RMS misfit (len(kernels), len(originals)) of upscale grids from each original length."""
        matrices = _padded([grids(self.length, np.array(originals), k, self.starts, self.window, shift) for k in kernels])
        return misfits(self.scatters, matrices, len(self.lines)).reshape(len(kernels), len(originals))


@dataclass(frozen=True)
class _Fit:
    factor: float  # 1.0: no grid fits
    gain: float  # shifted misfit over aligned misfit of the grid found (or the best one tried)
    n0: int = 0
    kernel: int = 0
    misfit: float = 0.0  # RMS grey levels left by the grid found


def _axis(luma: np.ndarray, axis: int, quality: int | None, length: int) -> _Axis | None:
    if luma.shape[axis] < MIN_SIDE or luma.shape[1 - axis] < 4:
        return None
    y = np.moveaxis(luma, axis, 1)
    if len(y) > _LINES:  # evenly spaced lines: the work per axis is bounded
        y = y[np.linspace(0, len(y) - 1, _LINES).astype(int)]
    y = y - y.mean(axis=1, keepdims=True)
    measured = y.shape[1]
    if measured == length <= _WHOLE:
        starts, window = np.array([0]), length
    else:
        window = min(_WINDOW, measured - 16)
        starts = window_starts(measured, window, int(np.clip((measured - 16) // window, 2, _WINDOWS)))
    return _Axis(y, length, quality, starts, window, scatter(y, starts, window))


def _score(fit: float, shifted: float) -> float:
    return (shifted + _NOISE) / (fit + _NOISE)


def _grid_fit(ax: _Axis) -> _Fit:
    """The upscale grid that fits the lines of ``ax``, or factor 1.0 if none does."""
    length = ax.length
    if ax.whole:  # a short axis: every original length
        families = {n0: _GAIN_ALL for n0 in range(max(4, -(-length // 8)), length)}
    else:  # a periodic peak gives two factors, each an original length n0 known within about a pixel
        families = {round(length / s): _GAIN_FIXED for s in (2.0, 3.0, 4.0)}
        families.update({round(length / s): _GAIN for f in _peaks(ax.lines, ax.quality is not None) for s in (1 / (1 - f), 1 / f)})
    centres = [c for c in sorted(families) if ax.usable(c)]
    if not centres:
        return _Fit(1.0, 1.0)
    # A peak's n0 one original pixel either side too: its frequency is known to about a pixel.
    tried = {c: [n0 for n0 in ((c - 1, c, c + 1) if families[c] == _GAIN else (c,)) if ax.usable(n0)] for c in centres}
    originals = sorted({n0 for group in tried.values() for n0 in group})
    at = {n0: i for i, n0 in enumerate(originals)}
    aligned, shifted = ax.fits(originals), ax.fits(originals, shift=0.5)  # (kernels, originals)
    best = {}
    for c, group in tried.items():  # the best grid near c, and the best of the same grids shifted half a pixel:
        columns = [at[n0] for n0 in group]  # both chosen alike, so a native scores about 1 whatever the choice
        k, i = np.unravel_index(np.argmin(aligned[:, columns]), (len(NAMES), len(columns)))
        best[c] = (float(aligned[k, columns[i]]), int(k), group[i], float(shifted[:, columns].min()))
    best_fit = lambda n0, k: float(aligned[k, at[n0]])  # noqa: E731
    scored = [(_score(fit, moved), n0, k, (fit + _NOISE) / (1 - n0 / length) ** 0.5, families[c])
              for c, (fit, k, n0, moved) in best.items()]  # fourth: misfit per degree of freedom, comparable across grids
    gain = max(g for g, *_ in scored)
    # On a short axis flat graphics fit some grid by chance (edges that happen to fall where it allows
    # them): the grid must also explain the lines down to the noise.
    fitting = [(n0, k, g, fit) for g, n0, k, fit, least in scored
               if g >= least and (not ax.whole or best_fit(n0, k) <= ax.limit)]
    if not fitting:
        return _Fit(1.0, gain)
    # A finer grid also contains a coarser one: the coarsest grid that fits about as well is the original.
    least = min(fit for *_, fit in fitting)
    n0, k, g, _ = min((f for f in fitting if f[3] <= _NESTED * least), key=lambda f: f[0])
    return _Fit(length / n0, g, n0, k, best_fit(n0, k))


def _same_factor(ax: _Axis, other: _Fit) -> _Fit | None:
    """``ax`` tested at the factor and kernel found on the other axis (an upscale keeps the aspect
    ratio); the fit if the aligned grid beats its shifted one by :data:`_GAIN_JOINT`."""
    originals = [n0 for n0 in (round(ax.length / other.factor) + d for d in (-1, 0, 1)) if ax.usable(n0)]
    if not originals:
        return None
    kernel = (NAMES[other.kernel],)
    aligned, shifted = ax.fits(originals, kernel)[0], ax.fits(originals, kernel, 0.5)[0]
    i = int(aligned.argmin())
    gain = _score(aligned[i], shifted.min())
    if gain < _GAIN_JOINT or (ax.whole and aligned[i] > ax.limit):
        return None
    return _Fit(ax.length / originals[i], gain, originals[i], other.kernel, float(aligned[i]))


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


def _confidence(fit: _Fit, ax: _Axis | None) -> float:
    if ax is None:
        return 0.0
    if fit.factor > 1.0:
        return min(1.0, 1.3 - 1.0 / fit.gain**2)  # gain 1.2: 0.61, 1.5: 0.86, 1.8: 1.0
    if ax.lines.shape[1] <= _N_FFT:
        return 0.0
    return _detail(_spectrum(ax.lines))


def measure(luma: np.ndarray, quality: int | None = None, size: tuple[int, int] | None = None) -> tuple[tuple[float, float], tuple[float, float]]:
    """Upscaling factors (height, width), each >= 1, and their confidences (0..1) of a luma array
    (H, W). Each axis is measured alone (the height down the columns, the width along the rows);
    an axis that found nothing is then tested at the other's factor, since upscales keep the aspect.

    Args:
        size: the image's (height, width) when ``luma`` is its top-left part (a decoded band):
            upscale grids are laid over the whole image, as the resizer did.
    """
    size = size or luma.shape
    axes = [_axis(luma, a, quality, size[a]) for a in (0, 1)]
    fits = [_grid_fit(ax) if ax else _Fit(1.0, 1.0) for ax in axes]
    for a in (0, 1):
        ax, other = axes[a], fits[1 - a]
        if ax is not None and fits[a].factor == 1.0 and other.factor > 1.0:
            fits[a] = _same_factor(ax, other) or fits[a]
    # An upscale the other axis contradicts (another factor, or none where it could have been seen)
    # needs strong evidence: flat graphics fit some grid on one axis by chance.
    agree = abs(math.log(fits[0].factor / fits[1].factor)) <= _AGREE
    fits = [f if f.factor == 1.0 or agree or f.gain >= _GAIN_ALONE else _Fit(1.0, f.gain) for f in fits]
    factors = (fits[0].factor, fits[1].factor)
    return factors, (_confidence(fits[0], axes[0]), _confidence(fits[1], axes[1]))


def estimate(source: str | os.PathLike | bytes, *, max_pixels: int = MAX_DECODED_PIXELS) -> Effective:
    """Effective size, confidence and JPEG quality of one image file (path or bytes).

    Raises ``ValueError`` with one line naming the file for anything unreadable or undecodable.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    luma, (height, width), orientation, quality = _decode(source, max_pixels)
    (scale_h, scale_w), (confidence_h, confidence_w) = measure(luma, quality, (height, width))
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
