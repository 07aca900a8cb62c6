"""``probe.md``: the page of ``microcond probe``'s measurements.

Every statement is computed from probe.json's numbers (missing values are JSON ``null``), so the
page can never contradict them. No torch: the page can be rewritten from probe.json alone.
"""

from __future__ import annotations

from pathlib import Path

from microcond.base.files import atomic_write_text

SMALL_CHANGE = 0.05  # mean sharpness at the largest and smallest c_size closer than this: no visible effect
MEASURED = """\
How it is measured. Every row keeps one prompt and one seed's initial noise for all columns, so a
row changes only with the micro-condition. Sharpness is the variance of the Laplacian of luma (the
project's focus measure); the high-frequency share is the spectral energy above half the Nyquist
frequency. The crop sweep finds each image's object without knowing its colours: the object is the
largest connected group of cells, in a 32 x 32 grid of the mean absolute Laplacian, more detailed
than 4x the border cells' lower quartile and 1/20 of the most detailed cell. It is cut off when it
reaches a border cell; its centre is the detail-weighted centre of its cells. A crop from the left
moves content left, so a model that follows c_crop gives a negative slope of centre x against
c_left (and of centre y against c_top). The proxy expects an object-centred picture whose
background is plainer or softer than the object (the built-in prompts ask for plain backgrounds);
a sharp, textured background lowers every rate and flattens the slopes. Intervals are 95%:
Student t for means, Wilson for rates, OLS for slopes."""


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "n/a" if value is None else f"{value:{fmt}}"


def _interval(r: dict, fmt: str = ".3g") -> str:
    """``mean [low, high]`` of a mean_interval or slope record; the mean alone where the interval is null."""
    centre = r["mean"] if "mean" in r else r["slope"]
    if centre is None:
        return "n/a"
    return f"{centre:{fmt}}" if r["low"] is None else f"{centre:{fmt}} [{r['low']:{fmt}}, {r['high']:{fmt}}]"


def _pct(r: dict) -> str:
    return f"{100 * r['rate']:.0f}% [{100 * r['low']:.0f}, {100 * r['high']:.0f}]"


def _direction(r: dict) -> int:
    """+1 or -1 when the whole 95% interval lies above or below zero, else 0."""
    if r["low"] is None or r["high"] is None:
        return 0
    return 1 if r["low"] > 0 else -1 if r["high"] < 0 else 0


def reading(results: dict) -> list[str]:
    """Plain statements about the two sweeps, each computed from the numbers."""
    size, crop = results["size_sweep"], results["crop_sweep"]
    curve = size["curve"]
    sizes = [c["original_size"][0] for c in curve]
    within = size["spearman_within_rows"]
    verdict = {1: "rises with the requested original size, as in the paper's Fig. 3",
               -1: "falls as the requested original size grows, the opposite of the paper's Fig. 3",
               0: "has no trend with the requested original size that the rows agree on"}[_direction(within)]
    ratio = size["ratio_largest_to_smallest"]
    if ratio is not None and abs(ratio - 1) < SMALL_CHANGE:
        verdict = f"hardly depends on the requested original size (less than {100 * SMALL_CHANGE:.0f}% apart at the ends)"
    n = sum(c["laplacian_variance"]["n"] for c in curve)
    out = [f"- Sharpness {verdict}: Spearman {_num(size['spearman'], '+.2f')} over all {n} images, {_interval(within, '+.2f')} "
           f"within rows; the mean at c_size {max(sizes)} is {_num(size['ratio_largest_to_smallest'], '.2f')}x the mean at c_size {min(sizes)}."]
    for axis, key, offset, side in (("x", "slope_x_per_crop_left", "c_left", "left"), ("y", "slope_y_per_crop_top", "c_top", "top")):
        s = crop[key]
        if s["slope"] is None:
            why = f"only {s['n']} images with an object" if s["n"] < 3 else f"the crop queries need two values of {offset} with the other offset 0"
            out.append(f"- Object centre {axis} against {offset}: not measured ({why}).")
            continue
        moves = {-1: f"moves as a crop from the {side} would (paper Fig. 5)", 1: "moves the opposite way to a crop", 0: "does not move measurably"}[_direction(s)]
        out.append(f"- As {offset} grows, the object centre {axis} {moves}: {_interval(s, '+.2f')} px per px of requested crop "
                   f"({s['n']} images with an object).")
    queries = crop["queries"]
    base, far = queries[0], max(queries, key=lambda q: sum(q["crop_top_left"]))
    if far is not base:
        change = 100 * (far["cut_off"]["rate"] - base["cut_off"]["rate"])
        out.append(f"- Cut off: {_pct(base['cut_off'])} at c_crop {tuple(base['crop_top_left'])}, {_pct(far['cut_off'])} at "
                   f"{tuple(far['crop_top_left'])} ({change:+.0f} points).")
    return out


def size_table(size: dict) -> list[str]:
    lines = ["| c_size (h, w) | sharpness: Laplacian variance, mean [95% interval] | high-frequency energy share | images |",
             "| --- | --- | --- | --- |"]
    for c in size["curve"]:
        h, w = c["original_size"]
        lines.append(f"| {h}x{w} | {_interval(c['laplacian_variance'])} | {_interval(c['high_frequency_energy'])} | {c['laplacian_variance']['n']} |")
    return lines


def crop_table(crop: dict) -> list[str]:
    base = tuple(crop["queries"][0]["crop_top_left"])
    sides = list(crop["queries"][0]["touches"])
    lines = [f"| c_crop (top, left) | cut off [95% interval] | touches {' / '.join(sides)} | object centre y, x (px) | shift from {base}: y, x (px) |",
             "| --- | --- | --- | --- | --- |"]
    for q in crop["queries"]:
        touches = " / ".join(f"{100 * q['touches'][s]:.0f}%" for s in sides)
        lines.append(f"| {tuple(q['crop_top_left'])} | {_pct(q['cut_off'])} | {touches} | {_num(q['centre']['y']['mean'], '.1f')}, "
                     f"{_num(q['centre']['x']['mean'], '.1f')} | {_interval(q['shift']['y'], '+.1f')}, {_interval(q['shift']['x'], '+.1f')} |")
    return lines


def write_probe_page(results: dict, path: Path) -> Path:
    """Write ``path`` (probe.md) beside the grids that probe.json names."""
    s, t, size, crop = results["settings"], results["timing"], results["size_sweep"], results["crop_sweep"]
    r = s["resolution"]
    lines = [
        f"# Micro-conditioning probe: {Path(results['model']).name}", "",
        f"- model: `{results['model']}`",
        f"- {r}x{r} px, {s['steps']} steps, guidance {s['guidance']}, negative micro-conditions: {s['negative_micro']}, "
        f"{s['dtype']} on {results['environment']['device']}",
        f"- {len(results['prompts'])} prompts x {len(s['seeds'])} seeds ({', '.join(map(str, s['seeds']))}) = {len(results['rows'])} rows",
        f"- {t['images']} images in {t['sampling_s']:.1f} s: {t['images_per_s']:.3g} images/s, {t['seconds_per_image']:.3g} s per image "
        f"(loading {t['load_s']:.1f} s, total {t['total_s']:.1f} s)", "",
        "## Reading", "", *reading(results), "",
        "## Sharpness against the requested original size (paper Fig. 3)", "",
        f"c_crop (0, 0), c_ar {r}x{r}; rows: prompt and seed, columns: c_size.", "",
        f"![c_size sweep]({size['grid']})", "", *size_table(size), "",
        "## Cut-off and object position against the requested crop (paper Fig. 4 and 5)", "",
        f"c_size {crop['original_size'][0]}x{crop['original_size'][1]}, c_ar {r}x{r}; rows: prompt and seed, columns: c_crop.", "",
        f"![c_crop sweep]({crop['grid']})", "", *crop_table(crop), "",
        MEASURED, "",
        "## Prompts", "", *[f"- P{i + 1}: {p}" for i, p in enumerate(results["prompts"])], "",
        "Every number, with the per-image values, is in probe.json.", "",
    ]
    atomic_write_text(path, "\n".join(lines))
    return path
