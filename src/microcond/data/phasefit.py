"""An upscale cropped afterwards: the grid's phase is lost, so it is searched.

A crop that starts ``c`` pixels into an upscale by ``s`` places output ``x`` at original coordinate
``(x + c + 0.5) / s - 0.5``: the grid of an aligned upscale by ``s`` moved by a phase ``c / s``
(mod 1 original pixel) that nothing in the file records. The factor is known, to a fraction of a
percent, from the resampling periodicity, which a crop keeps; the phase is searched among
:data:`PHASES` steps of an original pixel, window by window (a factor off by 0.1% moves the phase by
a tenth of a pixel across a few hundred pixels, so one phase for the whole axis would not fit).
Each window keeps its best phase; the same grid half an original pixel away is its shifted self.
:mod:`microcond.data.gridfit` decides from these misfits, as for aligned grids.

A cropped nearest-neighbour upscale is not measured here: its runs of repeated pixels fit a finer
grid at a free phase as well as the true grid (runs of 2 and 3 pixels are runs of 1 and 2 put
together), and the true grid fits exactly only at a phase finer than these steps. In a lossless
file it is read off its runs before any grid is fitted (:mod:`microcond.data.nearest`); in a lossy
one it is measured at a smaller factor, or not at all.
"""

from __future__ import annotations

import numpy as np

from microcond.data.resampling import RESIZERS, grids, projections, residuals

PHASES = 8  # phases tried per original pixel (one window's best is at most 1/16 pixel off)
# Every kernel once: an offset convention is a phase, searched anyway; libvips' positions rounded
# to 1/64 pixel are kept (the rounding follows the phase).
PHASE_RESIZERS = tuple(name for name, (_, offset, positions) in RESIZERS.items() if offset == 0.0 or positions)


def phase_misfits(length: int, starts: np.ndarray, window: int, scatters: np.ndarray, count: int, factor: float,
                  resizers: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """For each resizer: RMS misfits (best phase, half an original pixel from it) of the ``count``
    lines whose ``scatters`` (B, window, window) are given, against its grids of ``factor`` at
    :data:`PHASES` phases, each window at its own best phase."""
    shifts = np.arange(PHASES) / PHASES
    originals = np.full(PHASES, length / factor)
    found = {}
    for resizer in resizers:
        matrices = grids(length, originals, resizer, starts, window, shift=shifts, borders=False)
        left = residuals(scatters, projections(matrices).reshape(PHASES, len(starts), window, window))  # (phases, B)
        best = left.argmin(axis=0)
        windows = np.arange(len(starts))
        aligned, shifted = left[best, windows].sum(), left[(best + PHASES // 2) % PHASES, windows].sum()
        norm = count * len(starts) * window
        found[resizer] = (float(np.sqrt(max(aligned, 0.0) / norm)), float(np.sqrt(max(shifted, 0.0) / norm)))
    return found
