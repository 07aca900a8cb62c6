"""What an upscale does to a signal: the resampling matrices of common resizers, the models
:mod:`microcond.data.effective` fits to measure an image's upscaling.

An upscale from ``n0`` to ``length`` samples places output ``x`` at original coordinate
``(x + 0.5) n0 / length - 0.5`` (centre-aligned: Pillow, OpenCV, most resizers) and weights the
originals around it by a kernel, normalised per output (Pillow's ``Resample.c``; its nearest
neighbour takes the original under the coordinate, stepped by repeated addition as
``Geometry.c`` does). :func:`grids` builds rows of that matrix for windows of an axis;
:func:`misfits` measures how far rows of pixels are from its span.
"""

from __future__ import annotations

import numpy as np

NEAREST = "nearest"


def _keys(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel; a = -0.5 is Pillow's bicubic."""
    t = np.abs(t)
    return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1, np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _lanczos3(t: np.ndarray) -> np.ndarray:
    """sinc(t) sinc(t / 3) for |t| < 3, else 0 (Pillow's Lanczos), without np.sinc's overhead."""
    x = np.pi * np.where(t == 0, 1.0, t)
    return np.where(np.abs(t) < 3, np.where(t == 0, 1.0, 3 * np.sin(x) * np.sin(x / 3) / (x * x)), 0.0)


# name -> kernel of the distance in original pixels (Pillow's filters for upscaling; support <= 3).
KERNELS = {
    "bilinear": lambda t: np.clip(1 - np.abs(t), 0, None),
    "bicubic": _keys,
    "lanczos": _lanczos3,
}
NAMES = (NEAREST, *KERNELS)
SUPPORT = {NEAREST: 1, "bilinear": 1, "bicubic": 2, "lanczos": 3}  # original pixels each side a kernel reaches


def window_starts(length: int, window: int, count: int = 3) -> np.ndarray:
    """First pixels of ``count`` windows spread over an axis, 8 px clear of its ends."""
    return np.linspace(8, length - window - 8, count).astype(int)


def grids(length: int, originals: np.ndarray, kernel: str, starts: np.ndarray, window: int, shift: float = 0.0) -> np.ndarray:
    """Rows ``start:start+window`` of the matrices upscaling ``originals`` (N,) sample counts to
    ``length``, for each start, over the originals in reach (zero columns pad to a common width).

    ``shift`` moves the grid by that many original pixels (0.5: the worst alignment).
    Returns (N * len(starts), window, M).
    """
    n0 = np.asarray(originals, np.float64)[:, None, None, None]  # (N, 1, 1, 1)
    at = starts[:, None] + np.arange(window)  # (B, window) output pixels
    reach = SUPPORT[kernel]
    width = int(np.ceil(window * n0.max() / length)) + 2 * reach + 2
    if kernel == NEAREST:  # the original under the coordinate, as Pillow steps it
        steps = np.full((len(originals), length), 0.0)
        steps[:, 0] = 0.5 * n0[:, 0, 0, 0] / length + shift
        steps[:, 1:] = n0[:, 0, 0, :1] / length
        source = np.floor(np.cumsum(steps, axis=1)[:, at])[..., None]  # (N, B, window, 1)
        j = np.floor(source[:, :, :1, :] - 0.5 - reach) + np.arange(width)  # (N, B, 1, M)
        weights = (j == source).astype(np.float64)
    else:
        centre = ((at + 0.5) * n0[..., 0] / length + shift)[..., None]  # (N, B, window, 1) original pixels
        j = np.floor(centre[:, :, :1, :] - 0.5 - reach) + np.arange(width)  # (N, B, 1, M) originals in reach
        weights = KERNELS[kernel](j + 0.5 - centre)
    weights = weights * ((j >= 0) & (j < n0))  # Pillow drops taps outside the image
    weights /= np.maximum(weights.sum(axis=-1, keepdims=True), 1e-12)
    return weights.reshape(-1, window, width).astype(np.float32)


def scatter(lines: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Scatter matrices ``X^T X`` (len(starts), window, window), float64, of the ``window``-pixel
    pieces at ``starts`` of ``lines`` (count, length): all a least-squares residual needs, so
    the cost of testing a grid does not grow with the number of lines."""
    pieces = np.stack([lines[:, s : s + window] for s in starts]).astype(np.float64)  # (B, R, window)
    return pieces.transpose(0, 2, 1) @ pieces


def misfits(scatters: np.ndarray, matrices: np.ndarray, count: int) -> np.ndarray:
    """RMS left after projecting ``count`` lines on the span of each matrix, pooled over windows.

    ``scatters`` (B, window, window) from :func:`scatter`; ``matrices`` (G * B, window, M) from
    :func:`grids` for the same windows. Columns outside a window's reach are zero and the edge ones
    can be proportional (touched by one row): a ridge of 1e-9 (a kernel weight of 3e-5) removes
    them and biases nothing measurable. Returns (G,).
    """
    a = matrices.astype(np.float64)
    at = a.transpose(0, 2, 1)
    gram = at @ a + 1e-9 * np.eye(a.shape[2])
    projection = a @ np.linalg.solve(gram, at)  # (G*B, window, window)
    projection = projection.reshape(-1, *scatters.shape)  # (G, B, window, window)
    left = np.trace(scatters, axis1=1, axis2=2).sum() - np.einsum("gbij,bij->g", projection, scatters)
    pooled = left / (count * len(scatters) * a.shape[1])
    return np.sqrt(np.maximum(pooled, 0.0))
