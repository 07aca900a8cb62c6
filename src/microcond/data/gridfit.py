"""How an upscale shows in the pixels: the factor by which each axis of a luma array was upscaled,
found by fitting the resampling grids of common resizers (:mod:`microcond.data.resampling`).
:mod:`microcond.data.effective` decodes files and calls :func:`measure`.

Method (each axis: rows for the width, columns for the height):

0. Runs. A lossless file whose lines repeat pixels in runs on one grid along both axes is a
   nearest-neighbour upscale, cropped or not; their spacing is the factor (:mod:`microcond.data.nearest`).
1. Resampling periodicity. Resizing by ``s`` places output pixels at a phase that repeats every
   ``s`` pixels, on every row alike, so the row-average of ``|second difference|`` (and of
   ``|first difference|``: nearest neighbour near 2x) is periodic and its spectrum peaks at ``1/s``
   folded into [0, 1/2] (Gallagher 2005; Kirchner 2008). A peak at ``f`` gives the pair
   ``1/(1-f)``, ``1/f``. A lossy codec's block pattern (JPEG's 8 px, WebP's 16) is removed first
   (per-phase means over windows of 8 blocks) and its frequencies are ignored.
   First, the two factors of the peak both axes show most strongly are fitted on both axes (as in
   3.): an upscale that fits one of them far better than shifted (:data:`_QUICK`) needs no other
   test (:func:`_quick`).
2. Re-interpolation. For each candidate original length ``n0`` (a peak's, one pixel either side,
   and 2x, 3x, 4x: an exact 2x leaves no periodicity, its phases being mirror images; the factors
   whose periodicity a codec's blocks hide, such as 4/3 in a JPEG, tested on both axes together
   only; on a short axis, fitted whole (:mod:`microcond.data.gridaxis`), every ``n0``) and each
   resizer of Pillow, OpenCV, libvips and ImageMagick (kernel and phase convention,
   :data:`microcond.data.resampling.RESIZERS`), the lines are projected on the span of the upscale
   matrix by least squares, in up to 4 windows of 48 px (short axes whole), all lines at once through the
   windows' scatter matrices. An upscaled line lies in that span up to rounding and compression
   noise, and the same grids shifted by half an original pixel fit worse; a native line fits both
   alike. Both sides are the best of the same grids (the resizer that fits best, ``n0`` +-1), so a
   native scores about 1. A candidate whose aligned fit beats the shifted one by :data:`_GAIN` fits; among those
   the coarsest that fits about as well per degree of freedom is the original (a finer grid
   contains a coarser one), unless its gain is much weaker.
3. Both axes. Upscales keep the aspect ratio, so unless both axes found the same factor, every
   factor either axis suggests (and the peaks of the two axes' spectra added) is tested on both, with
   the one resizer that fits both axes best (one resizer made both), and weak evidence that agrees
   counts (:data:`_GAIN_EACH`, :data:`_GAIN_PAIR`; factors whose pattern repeats with a codec's
   blocks need more). An upscale of one axis alone needs a gain of :data:`_GAIN_ALONE`; if the
   other axis holds nothing a grid can tell (horizontal bands: the found grid explains it to the
   noise), a gain of :data:`_GAIN_UNOPPOSED`, and both take the factor (:func:`_featureless`).
   On short axes flat graphics fit some grid by chance, so there a fit must also explain the
   pixels down to the noise (:meth:`microcond.data.gridaxis.Axis.limit`).
4. Cropped. When no aligned grid fits both axes, the grid may have been moved by a crop after
   the upscale: the factors of the periodic peaks (:data:`_CROP_LEAST` and up) are tried at every
   phase, window by window (:mod:`microcond.data.phasefit`), ranked by one kernel's gains (which
   must reach :data:`_CROP_SCREEN_LEAST`), then the best with every resizer, one for both axes;
   it must beat itself half an original pixel away by :data:`_CROP_EACH` on each axis and
   :data:`_CROP_PAIR` together.
5. Periodic. Content so smooth that every grid fits it to the rounding noise (shifted too) gives
   no gain, yet the periodic trace of the resampling stands out: a peak of :data:`_PERIODIC` on
   both axes at one frequency is taken for an upscale (:func:`_periodic`).

Work. Each grid fitted (one resizer's upscale from one original length, at one shift or phase)
is counted (:class:`microcond.data.gridaxis.Work`, about 0.3 ms on one core): :func:`measure`
stops where a budget would be passed, with the verdict of the steps done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from microcond.data.codecs import LOSSLESS, Codec
from microcond.data.gridaxis import Axis, Spent, Work, prepare
from microcond.data.nearest import run_factor
from microcond.data.periodicity import N_FFT, detail, power_at, spectrum, strongest
from microcond.data.phasefit import PHASE_RESIZERS
from microcond.data.resampling import NAMES, OVERSHOOT

_GAIN = 1.2  # aligned fit this much better than the shifted one: upscaled
_GAIN_FIXED = 1.5  # the same for factors 2, 3, 4 tried without a periodic peak (symmetric phases)
_GAIN_ALL = 1.3  # the same on a short axis, where every original length is tried
_GAIN_EACH, _GAIN_PAIR = 1.03, 1.2  # the same for one factor on both axes: each, and their product
_GAIN_CLEAR = 3.0  # a grid this much better than its shifted self needs not explain a short axis to the noise
_GAIN_ALONE = 2.0  # the same for an upscale of one axis that the other contradicts
_GAIN_UNOPPOSED = 1.5  # ... and that the other holds nothing against (see _featureless)
_AGREE = 0.095  # factors within 10% agree
_NESTED = 1.3  # a coarser grid fitting within this factor of the best one is preferred
_WEAKER = 0.5  # ... unless its log gain is below this share of the best grid's
_FINEST_ORIGINAL = 8  # upscales by more than 8x are not looked for
_SHARED_LEAST = 6.0  # a peak of both axes' spectra added, over its median, worth testing
_CROP_LEAST = 1.35  # cropped upscales by less are not looked for (finer grids at a free phase fit flat graphics by chance)
_CROP_EACH, _CROP_PAIR = 1.25, 2.0  # a phase-searched grid's gain on each axis, and their product
_CROP_SCREEN = ("bicubic",)  # the kernel that ranks the factors of a cropped upscale before all are tried
_CROP_SCREEN_LEAST = 1.5  # ... and whose gains (product of both axes) must reach this for them to be tried
_PERIODIC = 100.0  # a periodic peak this strong on both axes is an upscale (natives' strongest: about 60)
_QUICK = 3.0  # the product of both axes' gains at the strongest peak's factor that ends the search (each at least _GAIN)
_NOISE = 0.3  # grey levels added to both residuals: 8-bit rounding (1/sqrt(12)) and below


def _factors(f: float) -> tuple[float, ...]:
    """The two upscaling factors a periodic peak at ``f`` (cycles/pixel) may come from, up to :data:`_FINEST_ORIGINAL`."""
    return tuple(s for s in (1 / (1 - f), 1 / f) if s <= _FINEST_ORIGINAL)


def _on_both(axes: list[Axis]) -> dict[float, float]:
    """Each axis's peaks with their power on both axes (the weaker): a pattern both axes show."""
    return {f: min(power_at(ax.spectra, f, 1.5 / ax.lines.shape[1]) for ax in axes) for ax in axes for f in ax.peaks}


def _shared_peaks(axes: list[Axis]) -> list[float]:
    """Peaks of the two axes' spectra added: an upscale that keeps the aspect ratio repeats with the
    same period along both, so a pattern too weak on either axis alone can stand out."""
    grid = np.linspace(0.1, 0.5, 4001)
    found: list[float] = []
    both = [ax.spectra for ax in axes]
    if min(len(spectra) for spectra in both) < 2:
        return []
    for (f0, p0), (f1, p1) in zip(*both):
        added = np.interp(grid, f0, p0, left=0, right=0) + np.interp(grid, f1, p1, left=0, right=0)
        found += strongest(grid, added / 2, 3.0 / min(ax.lines.shape[1] for ax in axes), found, least=_SHARED_LEAST)
    return found


@dataclass(frozen=True)
class _Fit:
    factor: float  # 1.0: no grid fits
    gain: float  # shifted misfit over aligned misfit of the grid found (or the best one tried)
    n0: int = 0
    kernel: int = 0
    misfit: float = 0.0  # RMS grey levels left by the grid found


def _score(fit: float, shifted: float) -> float:
    return (shifted + _NOISE) / (fit + _NOISE)


def _candidates(ax: Axis) -> dict[int, float]:
    """Original lengths worth testing on ``ax``, each with the gain its grid must reach."""
    length = ax.length
    if ax.whole:  # a short axis: every original length
        families = {n0: _GAIN_ALL for n0 in range(max(4, -(-length // _FINEST_ORIGINAL)), length)}
    else:  # a periodic peak gives two factors, each an original length n0 known within about a pixel
        codec = ax.codec  # no periodicity at 2x (symmetric phases) nor where a codec's blocks hide it
        families = {round(length / s): math.inf for s in codec.hidden}  # blocks fit these: one resizer on both axes only
        families.update({round(length / s): max(_GAIN_FIXED, codec.block_gain if codec.aligned_with_blocks(s) else 0) for s in (2.0, 3.0, 4.0)})
        families.update({round(length / s): _GAIN for f in ax.peaks for s in (1 / (1 - f), 1 / f)})
    return {c: g for c, g in sorted(families.items()) if ax.usable(c) and c * _FINEST_ORIGINAL >= length}


def _tested(ax: Axis, groups: dict) -> dict:
    """For each group of original lengths: (misfit, kernel, n0) of its best aligned grid, and the gain
    of that resizer's grids over themselves shifted half an original pixel (best of the group on both
    sides: a native line scores about 1). Not over other resizers' grids: one may be this one's moved
    by a fraction of a pixel (libvips' phase against Pillow's), or smooth enough to fit it shifted."""
    originals = sorted({n0 for group in groups.values() for n0 in group})
    if not originals:
        return {}
    at = {n0: i for i, n0 in enumerate(originals)}
    aligned = ax.aligned(originals)  # (resizers, originals)
    best = {}
    for key, group in groups.items():
        if group:
            columns = [at[n0] for n0 in group]
            best[key] = np.unravel_index(np.argmin(aligned[:, columns]), (len(NAMES), len(columns)))
    # Only the best resizer of each group is shifted: one batch per resizer.
    for k in sorted({int(k) for k, _ in best.values()}):
        ax.shifted(sorted({n0 for key, (kk, _) in best.items() if kk == k for n0 in groups[key]}), k)
    fits = {key: (groups[key][i], int(k), float(aligned[k, at[groups[key][i]]])) for key, (k, i) in best.items()}  # n0, resizer, misfit
    return {key: _Fit(ax.length / n0, _score(fit, float(ax.shifted(groups[key], k).min())), n0, k, fit) for key, (n0, k, fit) in fits.items()}


def _explains(ax: Axis, fit: _Fit) -> bool:
    """On a short axis flat graphics fit some grid by chance (edges that happen to fall where it
    allows them): a grid must also explain the lines down to the noise, or, where more is left
    than the noise model says (overshoot clipped at black or white; a lossy codec's noise, which
    grows with the detail), beat its shifted self by far."""
    noisier = ax.codec.lossy or NAMES[fit.kernel] in OVERSHOOT
    return not ax.whole or fit.misfit <= ax.limit or (noisier and fit.gain >= _GAIN_CLEAR)


def _per_dof(ax: Axis, fit: _Fit) -> float:
    """Misfit per degree of freedom left: comparable across grids of different coarseness."""
    return (fit.misfit + _NOISE) / (1 - fit.n0 / ax.length) ** 0.5


def _coarsest(fits: list[tuple[_Fit, float, float]]) -> _Fit:
    """The original among the grids that fit, each given with its gain and its misfit per degree of
    freedom. A finer grid also contains a coarser one, so the coarsest grid that fits about as well
    as the best is the original; a much weaker gain than the best's is a grid that fits smooth
    content by chance, not the original."""
    strongest = max(math.log(gain) for _, gain, _ in fits)
    fits = [(f, dof) for f, gain, dof in fits if math.log(gain) >= _WEAKER * strongest]
    least = min(dof for _, dof in fits)
    return max((f for f, dof in fits if dof <= _NESTED * least), key=lambda f: f.factor)


def _grid_fit(ax: Axis) -> _Fit:
    """The upscale grid that fits the lines of ``ax``, or factor 1.0 if none does."""
    families = _candidates(ax)
    # A peak's n0 one original pixel either side too: its frequency is known to about a pixel.
    groups = {c: [n0 for n0 in ((c - 1, c, c + 1) if need == _GAIN else (c,)) if ax.usable(n0)] for c, need in families.items()}
    tested = _tested(ax, groups)
    if not tested:
        return _Fit(1.0, 1.0)
    fitting = [(f, f.gain, _per_dof(ax, f)) for c, f in tested.items() if f.gain >= families[c] and _explains(ax, f)]
    if not fitting:
        return _Fit(1.0, max(f.gain for f in tested.values()))
    return _coarsest(fitting)


def _near(ax: Axis, s: float) -> list[int]:
    """The usable original lengths of an upscale of ``ax`` by ``s``, within a pixel."""
    return [n0 for n0 in (round(ax.length / s) + d for d in (-1, 0, 1)) if ax.usable(n0)]


def _fit_of(ax: Axis, group: list[int], k: int) -> _Fit:
    """The fit of resizer ``k``'s best grid among the original lengths ``group``."""
    aligned = ax.aligned(group)[k]
    i = int(np.argmin(aligned))
    return _Fit(ax.length / group[i], _score(float(aligned[i]), float(ax.shifted(group, k).min())), group[i], k, float(aligned[i]))


def _pair(axes: list[Axis], s: float) -> list[_Fit] | None:
    """Both axes' fits at factor ``s`` (original lengths within a pixel) by the one resizer whose grids
    fit the two best together; None if an axis has no usable original length."""
    groups = [_near(ax, s) for ax in axes]
    if not all(groups):
        return None
    k = int(np.argmin(sum(ax.aligned(g).min(axis=1) for ax, g in zip(axes, groups))))  # (resizers,) per axis, added
    return [_fit_of(ax, g, k) for ax, g in zip(axes, groups)]


def _phased(axes: list[Axis], factors: tuple[float, ...] | list[float], resizers: tuple[str, ...]) -> list[_Fit]:
    """Both axes' fits at these factors by the resizer whose grids at their best phases fit the two
    best together (:meth:`microcond.data.gridaxis.Axis.phased`)."""
    found = [ax.phased(s, resizers) for ax, s in zip(axes, factors)]
    best = min(resizers, key=lambda k: found[0][k][0] + found[1][k][0])
    return [_Fit(s, _score(*misfit[best]), round(ax.length / s), NAMES.index(best), misfit[best][0]) for ax, s, misfit in zip(axes, factors, found)]


def _periodic(axes: list[Axis]) -> list[_Fit] | None:
    """Content so smooth that every grid fits it to the rounding noise, shifted or not, still shows
    the resampling's periodicity: a peak of :data:`_PERIODIC` on both axes at one frequency, far
    above any native's, is an upscale at one of its two factors, told apart by the gains of one
    kernel's grids at their best phases (weak: a low confidence says so; where neither shows any,
    a toss-up between ``s`` and ``s / (s - 1)``)."""
    found = _on_both(axes)
    strong = [f for f, power in found.items() if power >= _PERIODIC]
    if not strong:
        return None
    f = max(strong, key=found.get)
    pairs = [pair for s in _factors(f) for pair in [_pair(axes, s)] if pair]
    # Gains at the best phases: a crop may have moved the grid.
    return max(pairs, key=lambda pair: math.prod(f.gain for f in _phased(axes, [f.factor for f in pair], _CROP_SCREEN)), default=None)


def _same_factor(axes: list[Axis], factors: list[float]) -> _Fit | None:
    """Both axes tested at each factor (an upscale keeps the aspect ratio), which a factor passes if
    the product of the two axes' gains reaches :data:`_GAIN_PAIR`, each at least :data:`_GAIN_EACH`:
    weak evidence on each axis that agrees is evidence. One resizer made both axes: the one whose
    grids fit the two axes best together is tested on both. Returns the factor passed (per axis) or None."""
    passed = []
    for s in factors:
        pair = _pair(axes, s)
        if pair is None:
            continue
        # A codec's blocks favour grids whose pattern repeats with them (JPEG's 8 px: 2x, 4x, 8/3x, ...).
        need = axes[0].codec.block_gain if axes[0].codec.aligned_with_blocks(s) else _GAIN_PAIR
        if min(f.gain for f in pair) < _GAIN_EACH or pair[0].gain * pair[1].gain < need:
            continue
        if not all(_explains(ax, f) for ax, f in zip(axes, pair)):
            continue
        passed.append(pair)
    return _coarsest_pair(axes, passed)


def _coarsest_pair(axes: list[Axis], passed: list[list[_Fit]]) -> list[_Fit] | None:
    """The original among factors that passed on both axes (:func:`_coarsest`), or None if none did."""
    if not passed:
        return None
    best = _coarsest([(pair[0], pair[0].gain * pair[1].gain, sum(_per_dof(ax, f) for ax, f in zip(axes, pair))) for pair in passed])
    return next(pair for pair in passed if pair[0] is best)


def _quick(axes: list[Axis]) -> list[_Fit] | None:
    """The factors of the periodic peak that both axes show most strongly, tested on both axes
    first: an upscale whose grid they fit far better than shifted (:data:`_QUICK`) needs no other
    test. Returns the fits of both axes, or None."""
    found = _on_both(axes)
    if not found:
        return None
    passed = []
    for s in _factors(max(found, key=found.get)):
        pair = _pair(axes, s)
        if pair is None or axes[0].codec.aligned_with_blocks(s):  # a codec's blocks fit those too: the full search decides
            continue
        if min(fit.gain for fit in pair) >= _GAIN and pair[0].gain * pair[1].gain >= _QUICK and all(_explains(ax, fit) for ax, fit in zip(axes, pair)):
            passed.append(pair)
    return _coarsest_pair(axes, passed)


def _featureless(axes: list[Axis], fits: list[_Fit]) -> tuple[list[_Fit], bool]:
    """One axis upscaled (a gain of :data:`_GAIN_UNOPPOSED`), the other showing nothing: the other
    axis's lines (ripples, a horizon) may hold no detail across them that a grid could tell. If
    the found resizer's grid of the same factor explains them down to the noise
    (:meth:`microcond.data.gridaxis.Axis.limit`), they are no evidence against an upscale that
    kept the aspect ratio: both axes take the factor. Returns the fits and whether they agree."""
    found = 0 if fits[0].factor > 1.0 else 1
    fit, ax = fits[found], axes[1 - found]
    if fit.gain < max(_GAIN_UNOPPOSED, ax.codec.block_gain if ax.codec.aligned_with_blocks(fit.factor) else 0.0):
        return fits, False
    group = _near(ax, fit.factor)
    if not group or ax.aligned(group)[fit.kernel].min() > ax.limit:
        return fits, False
    other = _fit_of(ax, group, fit.kernel)
    return ([fit, other] if found == 0 else [other, fit]), True


def _cropped(axes: list[Axis]) -> list[_Fit] | None:
    """An upscale cropped afterwards (:mod:`microcond.data.phasefit`): factors from the periodicity
    of either axis or both, ranked by one kernel's gains at the best phases; the best factor is
    then tried with every kernel, one for both axes. Returns the fits of both axes, or None."""
    frequencies = [f for ax in axes for f in ax.peaks] + _shared_peaks(axes)
    factors = sorted({round(s, 3) for f in frequencies for s in _factors(f) if s >= _CROP_LEAST})
    if not factors:
        return None
    screened = {s: math.prod(f.gain for f in _phased(axes, (s, s), _CROP_SCREEN)) for s in factors}
    factor = max(screened, key=screened.get)
    if screened[factor] < _CROP_SCREEN_LEAST:
        return None
    pair = _phased(axes, (factor, factor), PHASE_RESIZERS)
    return pair if min(f.gain for f in pair) >= _CROP_EACH and pair[0].gain * pair[1].gain >= _CROP_PAIR else None


def _confidence(fit: _Fit, ax: Axis | None) -> float:
    if ax is None:
        return 0.0
    if fit.factor > 1.0:
        return min(1.0, max(0.0, 1.3 - 1.0 / fit.gain**2))  # gain 1.2: 0.61, 1.5: 0.86, 1.8: 1.0; a periodic verdict's may be 0
    if ax.lines.shape[1] <= N_FFT:
        return 0.0
    return detail(spectrum(ax.lines))


def measure(luma: np.ndarray, codec: Codec = LOSSLESS, size: tuple[int, int] | None = None,
            budget: int | None = None) -> tuple[tuple[float, float], tuple[float, float], int]:
    """Upscaling factors (height, width), each >= 1, their confidences (0..1), and the grids fitted
    (:class:`microcond.data.gridaxis.Work`) of a luma array (H, W). Each axis is measured alone
    (the height down the columns, the width along the rows); unless both found the same factor,
    every factor either suggests is then tested on both, since upscales keep the aspect ratio.

    Args:
        codec: the file's compression (its block pattern and noise, :mod:`microcond.data.codecs`).
        size: the image's (height, width) when ``luma`` is its top-left part (a decoded band):
            upscale grids are laid over the whole image, as the resizer did.
        budget: the most grids to fit (None: no limit). The steps run in the order of the module
            doc; where the next would exceed the budget, the verdict of those done stands (an
            upscale of one axis alone still needs :data:`_GAIN_ALONE`), and an axis then called
            native has confidence 0 (not all was checked). Spent before each axis had its own fit:
            factor 1, confidence 0.
    """
    size = size or luma.shape
    work = Work(budget)
    axes = [prepare(luma, a, codec, size[a], work) for a in (0, 1)]
    if None not in axes and not codec.lossy:  # a nearest-neighbour upscale, cropped or not, from its runs
        runs = [run_factor(ax.lines) for ax in axes]
        if None not in runs and abs(math.log(runs[0] / runs[1])) <= _AGREE:
            return (axes[0].length / round(axes[0].length / runs[0]), axes[1].length / round(axes[1].length / runs[1])), (1.0, 1.0), 0
    windowed = None not in axes and not any(ax.whole for ax in axes)  # short axes are fitted whole, at every n0
    try:  # the strongest shared peak first; where it settles nothing, each axis's own fit
        quick = _quick(axes) if windowed else None
        fits = quick or [_grid_fit(ax) if ax else _Fit(1.0, 1.0) for ax in axes]
    except Spent:
        return (1.0, 1.0), (0.0, 0.0), work.done
    agree = quick is not None or abs(math.log(fits[0].factor / fits[1].factor)) <= _AGREE
    complete = True
    try:
        fits, agree = _both_axes(axes, fits, agree)
    except Spent:
        complete = False
    # An upscale of one axis alone (the other contradicts, or cannot be measured) needs strong
    # evidence: flat graphics fit some grid on one axis by chance.
    fits = [f if f.factor == 1.0 or agree or f.gain >= _GAIN_ALONE else _Fit(1.0, f.gain) for f in fits]
    try:
        if complete and windowed and not (agree and fits[0].factor > 1.0):
            fits = _cropped(axes) or fits  # no aligned grid fits both axes: perhaps one whose phase a crop moved
        if complete and windowed and fits[0].factor == fits[1].factor == 1.0:
            fits = _periodic(axes) or fits  # no grid tells: the periodicity alone, where it is beyond doubt
    except Spent:
        complete = False
    factors = (fits[0].factor, fits[1].factor)
    confidences = tuple(_confidence(f, ax) if complete or f.factor > 1.0 else 0.0 for f, ax in zip(fits, axes))
    return factors, confidences, work.done


def _both_axes(axes: list[Axis | None], fits: list[_Fit], agree: bool) -> tuple[list[_Fit], bool]:
    """Unless both axes found the same factor: the factors either axis suggests, tested on both (an
    upscale keeps the aspect ratio), then an axis that may hold nothing a grid can tell
    (:func:`_featureless`). Returns the fits and whether they agree."""
    if not (agree and fits[0].factor > 1.0) and None not in axes:
        factors = {f.factor for f in fits if f.factor > 1.0}
        factors |= {ax.length / n0 for ax in axes for n0 in _candidates(ax)}
        factors |= {s for f in _shared_peaks(axes) for s in _factors(f)}
        lengths = {tuple(round(ax.length / s) for ax in axes): s for s in sorted(factors)}  # one per pair of lengths
        pair = _same_factor(axes, sorted(lengths.values()))
        if pair is not None:
            fits, agree = pair, True
    if not agree and None not in axes and (fits[0].factor == 1.0) != (fits[1].factor == 1.0):
        fits, agree = _featureless(axes, fits)
    return fits, agree
