"""One axis of a luma array prepared for the grid fits of :mod:`microcond.data.gridfit`: its lines
(at most :data:`_LINES`, mean removed), the windows tested (up to :data:`_WINDOWS` of
:data:`_WINDOW` pixels; an axis of at most :data:`_WHOLE` pixels whole) and their scatter matrices,
and the misfits of upscale grids over them, each computed once per image (grids' projections are
kept across images in :data:`PROJECTIONS`), counted against the image's :class:`Work` budget."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from microcond.data.codecs import Codec
from microcond.data.periodicity import modulation, strongest
from microcond.data.phasefit import PHASES, phase_misfits
from microcond.data.resampling import (
    NAMES,
    ProjectionCache,
    misfits,
    scatter,
    window_starts,
)

MIN_SIDE = 24  # shorter axes are not measured (factor 1, confidence 0)
_LINES = 512  # lines analysed per axis at most (evenly spaced in the decoded band)
_WHOLE = 96  # axes up to this long are fitted whole, every original length tried
_WINDOW, _WINDOWS = 48, 4  # re-interpolation: window length in pixels, windows at most
_LIMIT, _LIMIT_LOSSY = 0.6, 0.3  # see Axis.limit
PROJECTIONS = ProjectionCache()  # this process's grids, kept across images (64 MiB at most)


class Spent(Exception):
    """An image's work budget (:class:`Work`) would be exceeded by the next grids."""


@dataclass
class Work:
    """Grids fitted for one image so far, both axes, and the most it may fit (None: no limit). One
    grid is one resizer's upscale from one original length at one shift or phase, over the axis's
    windows: about 0.3 ms on one core (a 48 px window's projection is built per grid)."""

    limit: int | None = None
    done: int = 0

    def spend(self, grids: int) -> None:
        """Count ``grids`` more, or raise :class:`Spent` (counting nothing) past the limit."""
        if self.limit is not None and self.done + grids > self.limit:
            raise Spent
        self.done += grids


@dataclass(frozen=True)
class Axis:
    """One axis prepared for grid fits: its lines (count, measured), mean removed, the windows
    tested and their scatter matrices. ``length``: the axis's size in the file (a decoded band
    measures only the first ``measured`` pixels of it)."""

    lines: np.ndarray
    length: int
    codec: Codec  # the file's compression (:mod:`microcond.data.codecs`)
    starts: np.ndarray
    window: int
    scatters: np.ndarray
    work: Work = field(default_factory=Work, compare=False)  # the image's budget, shared by both axes
    known: dict = field(default_factory=dict, compare=False, repr=False)  # (n0, resizer) -> misfit; (n0, -1 - resizer): shifted

    @functools.cached_property
    def spectra(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The lines' periodicity spectra (:func:`microcond.data.periodicity.modulation`), for the axis's peaks and the shared ones."""
        return modulation(self.lines, self.codec.block)

    @functools.cached_property
    def peaks(self) -> list[float]:
        """Frequencies (cycles/pixel) of the strongest periodic peaks of the lines' spectra."""
        found: list[float] = []
        for f, power in self.spectra:
            found += strongest(f, power, 3.0 / self.lines.shape[1], found)
        return found

    @property
    def whole(self) -> bool:
        return self.window == self.length

    @property
    def limit(self) -> float:
        """Largest misfit an upscale may leave on this axis (RMS grey levels) where nothing else
        tells (a short axis; an axis without detail across its lines): :data:`_LIMIT` (8-bit
        rounding, and overshoot clipped at black and white), or more for a lossy file, a share of
        its quantization noise."""
        return max(_LIMIT, _LIMIT_LOSSY * self.codec.noise) if self.codec.lossy else _LIMIT

    def usable(self, n0: int) -> bool:
        """Too fine a grid leaves too few degrees of freedom to tell fits apart: not tested."""
        return 4 <= n0 and n0 * self.window < (self.window - 8) * self.length

    def _misfits(self, originals: list[int], resizers: tuple[int, ...], shift: float) -> dict[tuple[int, int], float]:
        """RMS misfits of the grids of ``resizers`` (indices into NAMES) from each original length,
        moved by ``shift`` original pixels."""
        if not originals:
            return {}
        self.work.spend(len(originals) * len(resizers))
        found = [PROJECTIONS.get(self.length, originals, NAMES[k], self.starts, self.window, shift) for k in resizers]
        values = misfits(self.scatters, np.concatenate(found), len(self.lines)).reshape(len(resizers), len(originals))
        return {(n0, k): float(values[r, i]) for r, k in enumerate(resizers) for i, n0 in enumerate(originals)}

    def phased(self, factor: float, resizers: tuple[str, ...]) -> dict[str, tuple[float, float]]:
        """Misfits (best phase, half a pixel from it) of grids of ``factor`` at any phase (:func:`phase_misfits`)."""
        self.work.spend(PHASES * len(resizers))
        return phase_misfits(self.length, self.starts, self.window, self.scatters, len(self.lines), factor, resizers)

    def aligned(self, originals: list[int]) -> np.ndarray:
        """RMS misfits (resizers, len(originals)) of every resizer's grid as it lays it; once per axis."""
        todo = sorted({n0 for n0 in originals if (n0, 0) not in self.known})
        self.known.update(self._misfits(todo, tuple(range(len(NAMES))), 0.0))
        return np.array([[self.known[n0, k] for n0 in originals] for k in range(len(NAMES))])

    def shifted(self, originals: list[int], resizer: int) -> np.ndarray:
        """RMS misfits (len(originals),) of one resizer's grids shifted by half an original pixel."""
        todo = sorted({n0 for n0 in originals if (n0, -1 - resizer) not in self.known})
        self.known.update(((n0, -1 - resizer), v) for (n0, _), v in self._misfits(todo, (resizer,), 0.5).items())
        return np.array([self.known[n0, -1 - resizer] for n0 in originals])


def prepare(luma: np.ndarray, axis: int, codec: Codec, length: int, work: Work | None = None) -> Axis | None:
    """Axis ``axis`` (0: the height, down the columns) of ``luma``, whose size in the file is
    ``length``, its grids counted in ``work`` (default: a new, unlimited count); None where it is
    too short to measure (:data:`MIN_SIDE`)."""
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
    return Axis(y, length, codec, starts, window, scatter(y, starts, window), Work() if work is None else work)
