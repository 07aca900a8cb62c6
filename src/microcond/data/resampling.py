"""What an upscale does to a signal: the resampling matrices of common resizers, the models
:mod:`microcond.data.effective` fits to measure an image's upscaling.

An upscale from ``n0`` to ``length`` samples places output ``x`` at original coordinate
``(x + 0.5 + offset) n0 / length - 0.5`` and weights the originals around it by a kernel,
normalised per output (Pillow's ``Resample.c``). ``offset`` is 0 for the centre-aligned grid of
Pillow, OpenCV and ImageMagick and -0.5 for libvips' upscale and OpenCV's ``INTER_NEAREST``, which
put output ``x`` at ``x n0 / length``. Each resizer of :data:`RESIZERS` is a kernel and an offset,
read off each library's upscale of an impulse; Pillow's nearest neighbour takes the original under
the coordinate, stepped by repeated addition as ``Geometry.c`` does. :func:`grids` builds rows of
that matrix for windows of an axis, :func:`projections` the projections onto its span (kept across
images by :class:`ProjectionCache`), and :func:`misfits` how far rows of pixels are from it.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

NEAREST = "nearest"


def _keys(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel; a = -0.5 is Pillow's bicubic (Catmull-Rom), a = -0.75 OpenCV's."""
    t = np.abs(t)
    return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1, np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _mitchell(t: np.ndarray, b: float = 1 / 3, c: float = 1 / 3) -> np.ndarray:
    """Mitchell-Netravali cubic (B = C = 1/3): ImageMagick's filter for enlarging."""
    t = np.abs(t)
    near = ((12 - 9 * b - 6 * c) * t - (18 - 12 * b - 6 * c)) * t * t + (6 - 2 * b)
    far = (((-b - 6 * c) * t + (6 * b + 30 * c)) * t - (12 * b + 48 * c)) * t + (8 * b + 24 * c)
    return np.where(t < 1, near, np.where(t < 2, far, 0.0)) / 6


def _lanczos(lobes: int):
    """sinc(t) sinc(t / lobes) for |t| < lobes, else 0 (Pillow's Lanczos: 3, OpenCV's: 4), without
    np.sinc's overhead."""

    def kernel(t: np.ndarray) -> np.ndarray:
        x = np.pi * np.where(t == 0, 1.0, t)
        return np.where(np.abs(t) < lobes, np.where(t == 0, 1.0, lobes * np.sin(x) * np.sin(x / lobes) / (x * x)), 0.0)

    return kernel


# name -> (kernel of the distance in original pixels, support: original pixels each side it reaches).
KERNELS = {
    "bilinear": (lambda t: np.clip(1 - np.abs(t), 0, None), 1),
    "bicubic": (_keys, 2),
    "cubic-0.75": (lambda t: _keys(t, -0.75), 2),
    "mitchell": (_mitchell, 2),
    "lanczos": (_lanczos(3), 3),
    "lanczos4": (_lanczos(4), 4),
}
AREA = "area"  # OpenCV's INTER_AREA enlarging: each output pixel the mean of the originals under its footprint
# resizer -> (kernel: NEAREST, AREA or a KERNELS key, offset in output pixels, positions per original
# pixel the coordinate is rounded to, 0: exact); which library does it.
RESIZERS = {
    NEAREST: (NEAREST, 0.0, 0),  # Pillow, ImageMagick's Point, OpenCV's INTER_NEAREST_EXACT
    "nearest-floor": (NEAREST, -0.5, 0),  # OpenCV's INTER_NEAREST, libvips
    "bilinear": ("bilinear", 0.0, 0),  # Pillow, OpenCV's INTER_LINEAR (its default), ImageMagick's Triangle
    "bilinear-vips": ("bilinear", -0.5, 0),  # libvips' linear
    "bicubic": ("bicubic", 0.0, 0),  # Pillow (its default), ImageMagick's Catrom
    "bicubic-vips": ("bicubic", -0.5, 64),  # libvips' resize (its default and every cubic or Lanczos kernel, when enlarging)
    "cubic-0.75": ("cubic-0.75", 0.0, 0),  # OpenCV's INTER_CUBIC
    "mitchell": ("mitchell", 0.0, 0),  # ImageMagick's default for enlarging
    "lanczos": ("lanczos", 0.0, 0),  # Pillow, ImageMagick's Lanczos
    "lanczos4": ("lanczos4", 0.0, 0),  # OpenCV's INTER_LANCZOS4
    AREA: (AREA, 0.0, 0),  # OpenCV's INTER_AREA
}
NAMES = tuple(RESIZERS)
OVERSHOOT = tuple(name for name, (kernel, _, _) in RESIZERS.items() if kernel not in (NEAREST, AREA, "bilinear"))  # negative lobes
SUPPORT = {NEAREST: 1, AREA: 1, **{name: support for name, (_, support) in KERNELS.items()}}


def window_starts(length: int, window: int, count: int = 3) -> np.ndarray:
    """First pixels of ``count`` windows spread over an axis, 8 px clear of its ends."""
    return np.linspace(8, length - window - 8, count).astype(int)


def grids(length: int, originals: np.ndarray, resizer: str, starts: np.ndarray, window: int, shift: float | np.ndarray = 0.0,
          borders: bool = True) -> np.ndarray:
    """Rows ``start:start+window`` of the matrices by which ``resizer`` (a :data:`RESIZERS` key)
    upscales ``originals`` (N,) sample counts to ``length``, for each start, over the originals in
    reach (zero columns pad to a common width).

    ``shift`` moves the grid by that many original pixels (0.5: the worst alignment), one for all
    or one per original count (N,); ``originals`` need not be whole (a crop of an upscale). Taps
    outside the originals are dropped as Pillow does at the image's borders, unless ``borders`` is
    False (a crop: the originals go on past its ends). The kernel is evaluated on the taps in
    reach of each output only, then laid into the matrix.
    Returns (N * len(starts), window, M).
    """
    kernel, offset, positions = RESIZERS[resizer]
    n0 = np.asarray(originals, np.float64)[:, None, None, None]  # (N, 1, 1, 1)
    shift = np.broadcast_to(np.asarray(shift, np.float64), (len(n0),))
    s3, s4 = shift[:, None, None], shift[:, None, None, None]
    at = starts[:, None] + np.arange(window)  # (B, window) output pixels
    reach = SUPPORT[kernel]
    width = int(np.ceil(window * n0.max() / length)) + 2 * reach + 2
    if kernel == NEAREST and offset == 0.0:  # the original under the coordinate, as Pillow steps it
        steps = np.full((len(originals), length), 0.0)
        steps[:, 0] = 0.5 * n0[:, 0, 0, 0] / length + shift
        steps[:, 1:] = n0[:, 0, 0, :1] / length
        source = np.floor(np.cumsum(steps, axis=1)[:, at])[..., None]  # (N, B, window, 1)
    elif kernel == NEAREST:  # x / (length / n0) as OpenCV and libvips compute it (ties fall on the original before)
        source = np.floor((at + 0.5 + offset) * (1 / (length / n0[..., 0])) + s3)[..., None]
    else:
        centre = ((at + 0.5 + offset) * n0[..., 0] / length + s3)[..., None]  # (N, B, window, 1) original pixels
        if positions:  # the coordinate's fraction rounded to 1 / positions (libvips' interpolators)
            centre = np.floor(centre - 0.5) + 0.5 + np.floor((centre - 0.5) % 1 * positions + 0.5) / positions
        source = np.floor(centre)  # the original under the coordinate (nearest neighbour)
    start = source if kernel == NEAREST else centre
    first = np.floor(start[:, :, :1, :] - 0.5 - reach)  # (N, B, 1, 1) the window's first original in reach: column 0
    if kernel == NEAREST:
        j, weights = source, np.ones_like(source)
    elif kernel == AREA:  # the output pixel's footprint over the originals, in OpenCV's arithmetic (resize.cpp)
        left = np.floor(at[..., None] * (1 / (length / n0)) + s4)  # (N, B, window, 1) the original under its left edge
        right = (at[..., None] + 1) - (left + 1 - s4) * (length / n0)  # share of the footprint past that original
        right = np.where(right <= 0, 0.0, right - np.floor(right))
        j = left + np.arange(2)
        weights = np.concatenate([1 - right, right], axis=-1)
    else:
        j = np.floor(centre - 0.5 - reach) + np.arange(2 * reach + 2)  # (N, B, window, T) every original in reach
        weights = KERNELS[kernel][0](j + 0.5 - centre)
    if borders:
        weights = weights * ((j >= 0) & (j < n0))  # Pillow drops taps outside the image
    weights /= np.maximum(weights.sum(axis=-1, keepdims=True), 1e-12)
    dense = np.zeros(weights.shape[:3] + (width,), np.float32)
    np.put_along_axis(dense, (j - first).astype(np.intp), weights.astype(np.float32), axis=-1)
    return dense.reshape(-1, window, width)


def scatter(lines: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Scatter matrices ``X^T X`` (len(starts), window, window), float64, of the ``window``-pixel
    pieces at ``starts`` of ``lines`` (count, length): all a least-squares residual needs, so
    the cost of testing a grid does not grow with the number of lines."""
    pieces = np.stack([lines[:, s : s + window] for s in starts]).astype(np.float64)  # (B, R, window)
    return pieces.transpose(0, 2, 1) @ pieces


def projections(matrices: np.ndarray) -> np.ndarray:
    """Orthogonal projections (G, window, window) onto the span of each matrix (G, window, M) of
    :func:`grids`, float32. Columns outside a window's reach are zero and the edge ones can be
    proportional (touched by one row): a ridge of 1e-9 (a kernel weight of 3e-5) removes them and
    biases nothing measurable."""
    a = matrices.astype(np.float64)
    at = a.transpose(0, 2, 1)
    gram = at @ a + 1e-9 * np.eye(a.shape[2])
    return (a @ np.linalg.solve(gram, at)).astype(np.float32)


def residuals(scatters: np.ndarray, projections: np.ndarray) -> np.ndarray:
    """Sums of squares (G, B) left after projecting the lines whose ``scatters`` (B, window, window)
    are given on the span of each grid, window by window; ``projections`` (G, B, window, window)
    from :func:`projections` for the same windows."""
    g, b = projections.shape[:2]
    kept = np.einsum("gbk,bk->gb", projections.reshape(g, b, -1).astype(np.float64), scatters.reshape(b, -1))  # trace(P S)
    return np.trace(scatters, axis1=1, axis2=2)[None, :] - kept


def misfits(scatters: np.ndarray, projections: np.ndarray, count: int) -> np.ndarray:
    """RMS left after projecting ``count`` lines on the span of each grid, pooled over windows
    (:func:`residuals`). Returns (G,)."""
    g, b, w, _ = projections.shape
    return np.sqrt(np.maximum(residuals(scatters, projections).sum(axis=1) / (count * b * w), 0.0))


_BATCH = 12  # original lengths whose grids are built together


class ProjectionCache:
    """Projections of upscale grids kept across images, least recently used dropped first.

    A projection depends on the grid alone (axis length, original length, resizer, shift, windows),
    never on the pixels, and files of one size share all of theirs that do not come from the
    image's own periodicity: a folder of camera photos or a web crawl, whose sizes repeat, fits
    most grids once. At most ``max_bytes`` (default 64 MiB) of float32 matrices per process; the
    first is computed and stored exactly as every later use reads it, so estimates do not depend
    on what the cache holds.
    """

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes, self.nbytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._kept: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def get(self, length: int, originals: list[int], resizer: str, starts: np.ndarray, window: int, shift: float) -> np.ndarray:
        """Projections (len(originals), len(starts), window, window) of :func:`grids`' matrices."""
        base = (length, resizer, shift, window, starts.tobytes())
        missing = sorted({n0 for n0 in originals if base + (n0,) not in self._kept})
        self.misses += len(missing)
        for lo in range(0, len(missing), _BATCH):  # similar widths together: padding costs cubic time
            batch = missing[lo : lo + _BATCH]
            found = projections(grids(length, np.array(batch), resizer, starts, window, shift))
            for n0, p in zip(batch, found.reshape(len(batch), len(starts), window, window)):
                self._kept[base + (n0,)] = p
                self.nbytes += p.nbytes
        self.hits += len(originals) - len(missing)
        out = np.stack([self._kept[base + (n0,)] for n0 in originals])
        for n0 in originals:
            self._kept.move_to_end(base + (n0,))
        while self.nbytes > self.max_bytes and len(self._kept) > 1:
            self.nbytes -= self._kept.popitem(last=False)[1].nbytes
        return out
