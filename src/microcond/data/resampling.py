"""What an upscale does to a signal: the resampling matrices of common resizers and the spectra
they leave. The models :mod:`microcond.data.effective` fits to measure an image's upscaling.

An upscale from ``n0`` to ``length`` samples places output ``x`` at original coordinate
``(x + 0.5) n0 / length - 0.5`` (centre-aligned: Pillow, OpenCV, most resizers) and weights the
originals around it by a kernel, normalised per output (Pillow's ``Resample.c``; its nearest
neighbour takes the original under the coordinate, stepped by repeated addition as
``Geometry.c`` does). :func:`grids` builds rows of that matrix for windows of an axis;
:func:`misfits` measures how far rows of pixels are from its span; :func:`spectral_models`
gives the whitened power spectrum an upscale by ``s`` leaves (sum of the kernel-weighted
aliases of a power-law spectrum), against which a measured spectrum is compared.
"""

from __future__ import annotations

import functools

import numpy as np

NEAREST = "nearest"


def _keys(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel; a = -0.5 is Pillow's bicubic."""
    t = np.abs(t)
    return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1, np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


# name -> kernel of the distance in original pixels (Pillow's filters for upscaling; support <= 3).
KERNELS = {
    "bilinear": lambda t: np.clip(1 - np.abs(t), 0, None),
    "bicubic": _keys,
    "lanczos": lambda t: np.where(np.abs(t) < 3, np.sinc(t) * np.sinc(t / 3), 0.0),
}
NAMES = (NEAREST, *KERNELS)


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
    width = int(np.ceil(window * n0.max() / length)) + 10
    if kernel == NEAREST:  # the original under the coordinate, as Pillow steps it
        steps = np.full((len(originals), length), 0.0)
        steps[:, 0] = 0.5 * n0[:, 0, 0, 0] / length + shift
        steps[:, 1:] = n0[:, 0, 0, :1] / length
        source = np.floor(np.cumsum(steps, axis=1)[:, at])[..., None]  # (N, B, window, 1)
        j = np.floor(source[:, :, :1, :] - 0.5 - 3) + np.arange(width)  # (N, B, 1, M)
        weights = (j == source).astype(np.float64)
    else:
        centre = ((at + 0.5) * n0[..., 0] / length + shift)[..., None]  # (N, B, window, 1) original pixels
        j = np.floor(centre[:, :, :1, :] - 0.5 - 3) + np.arange(width)  # (N, B, 1, M) originals in reach
        weights = KERNELS[kernel](j + 0.5 - centre)
    weights = weights * ((j >= 0) & (j < n0))  # Pillow drops taps outside the image
    weights /= np.maximum(weights.sum(axis=-1, keepdims=True), 1e-12)
    return weights.reshape(-1, window, width)


def misfits(lines: np.ndarray, matrices: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """RMS of ``lines`` (length, R) left after least-squares projection on the span of each matrix,
    pooled over the windows at ``starts``. matrices (G * len(starts), window, M) -> (G,)."""
    window = matrices.shape[1]
    x = np.stack([lines[s : s + window] for s in starts])  # (B, window, R)
    x = np.broadcast_to(x, (len(matrices) // len(starts), *x.shape)).reshape(-1, *x.shape[1:])
    transposed = matrices.transpose(0, 2, 1)
    gram = transposed @ matrices + 1e-6 * np.eye(matrices.shape[2])  # a small ridge: zero columns stay zero
    rest = x - matrices @ np.linalg.solve(gram, transposed @ x)
    return np.sqrt((rest * rest).reshape(-1, len(starts) * rest[0].size).mean(axis=1))


@functools.lru_cache(maxsize=4)
def spectral_models(n: int, scales: tuple[float, ...], alphas: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whitened (first difference) power spectra on the ``n``-point frequency grid: frequencies
    (F,), native power laws (A, F) and upscales (S, K * A, F), each the sum over aliases ``m`` of
    ``|H(s (f + m))|^2 fold(s (f + m))^-alpha x 4 sin^2(pi f)`` for kernel K's response ``H``."""
    f = np.arange(1, n // 2 + 1) / n
    t = np.linspace(-3, 3, 1537)
    nu = np.arange(0, 32, 1 / 128)
    cosines = np.cos(2 * np.pi * nu[:, None] * t[None, :]) * (t[1] - t[0])
    responses = [np.abs(cosines @ kernel(t)) ** 2 for kernel in KERNELS.values()]
    whiten = 4 * np.sin(np.pi * f) ** 2
    native = np.array([whiten * f**-alpha for alpha in alphas])
    upscaled = np.zeros((len(scales), len(responses) * len(alphas), len(f)))
    for i, s in enumerate(scales):
        for m in range(-3, 4):
            v = np.abs(s * (f + m))
            fold = np.maximum(np.abs(v - np.round(v)), 0.01)
            for k, response in enumerate(responses):
                gain = np.interp(v, nu, response, right=0.0)
                for a, alpha in enumerate(alphas):
                    upscaled[i, k * len(alphas) + a] += gain * fold**-alpha * whiten
    return f, native, upscaled


def log_misfits(power: np.ndarray, models: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Mean squared log error of ``a * model + b * noise`` fitted to ``power`` (relative least
    squares, a, b >= 0), per model. models (..., F) -> (...)."""
    a, b = models / power, noise / power
    aa, ab, bb, a1, b1 = (a * a).sum(-1), (a * b).sum(-1), (b * b).sum(), a.sum(-1), b.sum()
    det = aa * bb - ab * ab
    scale, floor = (a1 * bb - b1 * ab) / det, (aa * b1 - ab * a1) / det
    scale, floor = np.where(floor < 0, a1 / aa, scale), np.maximum(floor, 0)
    fitted = np.maximum(scale, 1e-30)[..., None] * models + floor[..., None] * noise
    return (np.log(fitted / power) ** 2).mean(-1)
