"""Periodic traces of resampling in lines of pixels, and how much detail a line holds: the spectra
that :mod:`microcond.data.gridfit` reads its candidate factors and its confidence in a native
verdict from."""

from __future__ import annotations

import numpy as np


def modulation(y: np.ndarray, block: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Spectra (frequency in cycles/pixel from 0.1 to 0.5, power over its median) of the mean
    |second difference| and of the mean |first difference| along the lines ``y`` (count, length)
    (a nearest-neighbour upscale near 2x repeats pixel pairs: only the first difference sees it).
    ``block``: the period of a codec's block pattern (0: none), removed window by window (its
    strength follows the content), its frequencies ignored."""
    spectra = []
    for difference in (np.abs(y[:, :-2] - 2 * y[:, 1:-1] + y[:, 2:]), np.abs(np.diff(y, axis=1))):
        d = difference.mean(axis=0) + 1e-3  # (n,)
        m = d / np.convolve(np.pad(d, 7, mode="reflect"), np.ones(15) / 15, mode="valid") - 1  # relative modulation
        n = len(m)
        if block:
            phase = (np.arange(n) + 1) % block
            for lo in range(0, n, 8 * block):
                part = slice(lo, lo + 8 * block)
                means = np.bincount(phase[part], m[part], block) / np.maximum(np.bincount(phase[part], None, block), 1)
                m[part] -= means[phase[part]]
        power = np.abs(np.fft.rfft(m * np.hanning(n), 4 * n)) ** 2
        f = np.arange(len(power)) / (4 * n)
        keep = f >= 0.1
        if block:
            keep &= np.min(np.abs(f[:, None] - np.arange(1, block // 2 + 1) / block), axis=1) > 2.0 / n
        median = np.median(power[keep]) if keep.sum() >= 2 else 0.0
        if median > 0:  # a flat image has no modulation at all: no spectrum to read
            spectra.append((f[keep], power[keep] / median))
    return spectra


def strongest(f: np.ndarray, power: np.ndarray, apart: float, found: list[float], top: int = 2, least: float = 15.0) -> list[float]:
    """Frequencies of the ``top`` strongest peaks of ``power`` (over its median) above ``least``,
    ``apart`` from each other and from those already ``found``."""
    mine: list[float] = []
    for i in np.argsort(power)[::-1]:
        if len(mine) == top or power[i] < least:
            break
        if all(abs(f[i] - g) > apart for g in mine + found):
            mine.append(float(f[i]))
    return mine


def power_at(spectra: list[tuple[np.ndarray, np.ndarray]], f: float, within: float) -> float:
    """The strongest power (over the median) of ``spectra`` (:func:`modulation`) within ``within`` of ``f``."""
    near = [power[np.abs(freq - f) <= within] for freq, power in spectra]
    return max((float(p.max()) for p in near if p.size), default=0.0)


N_FFT = 128  # Welch segment length: 64 frequency bins


def spectrum(y: np.ndarray) -> np.ndarray:
    """Welch power spectrum of the first difference along the lines ``y`` (whitens f^-2 images). (F,)"""
    rows = y[np.linspace(0, y.shape[0] - 1, min(128, y.shape[0])).astype(int)]
    d = np.diff(rows, axis=1)
    segments = d[:, : d.shape[1] // N_FFT * N_FFT].reshape(-1, N_FFT)
    segments = (segments - segments.mean(axis=1, keepdims=True)) * np.hanning(N_FFT)
    return (np.abs(np.fft.rfft(segments, axis=1)) ** 2).mean(axis=0)[1:] + 1e-9


def detail(power: np.ndarray) -> float:
    """Share of the low-band level that remains near Nyquist above 8-bit rounding noise, 0..1:
    how much a native verdict can be trusted (a flat image could hide any upscale)."""
    f = np.arange(1, len(power) + 1) / N_FFT
    rounding = 4 * np.sin(np.pi * f) ** 2 / 12 * float((np.hanning(N_FFT) ** 2).sum())
    high = max(float((power - rounding)[f >= 0.35].mean()), 0.0)
    return min(1.0, high / float(power[(f >= 0.05) & (f <= 0.15)].mean()) / 0.3)
