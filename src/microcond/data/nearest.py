"""A nearest-neighbour upscale in a lossless file, read off its repeated pixels.

Upscaling by ``s`` with nearest neighbour copies each original pixel into a run of ``floor(s)`` or
``ceil(s)`` identical output pixels, on every line alike, whatever the phase: a crop afterwards
keeps the runs. Where every analysed line repeats its previous pixel, a new original starts only
at the other positions, and their spacing is the factor. Cheap (one comparison per pixel) and
exact where grid fits are not: a cropped nearest-neighbour upscale fits a finer grid at a free
phase as well as its own (runs of 2 and 3 pixels are runs of 1 and 2 put together,
:mod:`microcond.data.phasefit`). A lossy codec changes the repeated pixels: not used there. An
area upscale (OpenCV's INTER_AREA) repeats pixels too, with a blend of two originals between
runs: told apart and left to the grid fits.
"""

from __future__ import annotations

import numpy as np

MIN_RUNS = 8  # runs needed on an axis
_ROUNDING = 0.45  # RMS grey levels a blend of its two neighbours leaves, at most (8-bit rounding: 0.29)
_REGULAR = 0.8  # share of runs whose length is floor(s) or ceil(s); the rest are longer (equal originals side by side)
_LEAST = 1.2  # smaller spacings are not an upscale (a native has a repeated column here and there)


def run_factor(lines: np.ndarray) -> float | None:
    """The nearest-neighbour upscaling factor of the lines (count, length) if their repeated
    pixels say so, else None: the runs' lengths are two neighbouring integers and their starts lie
    on one grid. Runs of equal originals side by side are counted as several runs."""
    starts = np.flatnonzero(np.any(lines[:, 1:] != lines[:, :-1], axis=0)) + 1  # where a new original begins
    if len(starts) <= MIN_RUNS:
        return None
    gaps = np.diff(starts)
    shortest = int(gaps.min())
    regular = gaps <= shortest + 1
    if regular.mean() < _REGULAR or not np.all(regular | (gaps >= 2 * shortest)):
        return None
    if _blended(lines, starts[np.flatnonzero(gaps == 1)]):
        return None
    s = float(gaps[regular].mean())
    index = np.concatenate([[0], np.cumsum(np.maximum(np.rint(gaps / s), 1))])  # a longer run: that many equal originals
    slope, offset = np.polyfit(index, starts, 1)
    # The runs of a grid start at floor(offset + k s): within a pixel of one line. Flat content whose
    # rounding repeats pixels here and there wanders off it.
    if slope < _LEAST or np.abs(starts - (offset + slope * index)).max() > 1.0:
        return None
    return float(slope)


def _blended(lines: np.ndarray, single: np.ndarray) -> bool:
    """Whether most one-pixel runs at positions ``single`` are blends of their neighbours, each
    column one weight for all lines (OpenCV's INTER_AREA puts one between the runs of each
    original): an area upscale, whose runs read as a nearest-neighbour upscale by half its factor.
    A nearest-neighbour run of one pixel is an original of its own."""
    if not len(single):
        return False
    left, mid, right = lines[:, single - 1], lines[:, single], lines[:, single + 1]  # (lines, runs)
    d, y = left - right, mid - right
    signal = (d * d).sum(axis=0)
    w = (d * y).sum(axis=0) / np.maximum(signal, 1e-9)
    residual = np.sqrt(((y - w * d) ** 2).mean(axis=0))
    told = signal > 0  # a run whose neighbours are equal on every line tells nothing
    return bool(told.any() and (residual[told] <= _ROUNDING).mean() > 0.5)
