"""docs/results.md and docs/results.json from ``microcond experiment paper``'s measurements.

Every statement on the page is computed from the numbers (so a rerun can never contradict its
page), and every number on the page is also a row of results.json: (model, seed, metric, query,
value, low, high).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from microcond.stats import spearman

PAPER_ORDER = ["size", "no-cond", "drop-small"]  # the paper's Table 2 order, best first


def _by_model(results: dict) -> dict[str, list[dict]]:
    models: dict[str, list[dict]] = {}
    for entry in results["runs"].values():
        models.setdefault(entry["model"], []).append(entry)
    return {name: sorted(runs, key=lambda e: e["seed"]) for name, runs in models.items()}


def _curve_values(entry: dict, sizes) -> list[float]:
    curve = entry["curve"]
    return [curve["any"]] * len(sizes) if "any" in curve else [curve[str(s)] for s in sizes]


def plot_curve(results: dict, sizes, path: Path) -> Path:
    """Sharpness against the requested original size: each model's mean over seeds, its seeds'
    range as error bars, the real images' sharpness by their true size beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    real = {int(k): v for k, v in results["real"]["curve"].items()}
    ax.plot(list(real), list(real.values()), "k--o", label="real training images, by original short edge")
    for i, (name, runs) in enumerate((n, r) for n, r in _by_model(results).items() if "curve" in r[0]):
        values = np.array([_curve_values(e, sizes) for e in runs])  # (seeds, sizes)
        mean = values.mean(axis=0)
        if "any" in runs[0]["curve"]:
            ax.axhline(mean[0], ls=":", lw=1.5, color=f"C{i}", label=f"{name} (cannot be asked)")
        else:
            err = np.stack([mean - values.min(axis=0), values.max(axis=0) - mean])
            ax.errorbar(sizes, mean, yerr=err, fmt="-o", color=f"C{i}", capsize=3, label=f"{name}: samples by requested c_size ({len(runs)} seeds)")
    return save_size_curve(fig, ax, sizes, "Fig. 3 at 32 px: sharpness against the requested original size", path,
                           xlabel="original short edge (px): requested c_size for samples, true size for real images")


def save_size_curve(fig, ax, sizes, title: str, path: Path, xlabel: str = "requested c_size (short edge, px)") -> Path:
    """Finish and write a sharpness-against-c_size figure (every Fig. 3 style picture): log-2 size
    axis ticked at ``sizes``, log sharpness axis, grid, legend."""
    import matplotlib.pyplot as plt

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("sharpness: Laplacian variance")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _pct(r: dict) -> str:
    return f"{100 * r['rate']:.0f}% [{100 * r['low']:.0f}, {100 * r['high']:.0f}]"


def _slope(p: dict) -> str:
    return f"{p['slope']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}]"


def rows(results: dict, ablation: dict | None = None) -> list[dict]:
    """Every number of the page as (model, seed, metric, query, value, low, high) rows."""
    out = []

    def add(model, seed, metric, query, *numbers):
        value, low, high = [v if v is None or np.isfinite(v) else None for v in (*numbers, None, None)[:3]]  # strict JSON: no NaN
        out.append({"model": model, "seed": seed, "metric": metric, "query": query, "value": value, "low": low, "high": high})

    real = results["real"]
    for label, r in real["cutoff"].items():
        add("real", None, "cutoff_rate", label, r["rate"], r["low"], r["high"])
    pos = real["position"]
    add("real", None, "centre_x_slope", "wide 64x128, c_left 0..32", pos["slope"], pos["low"], pos["high"])
    for left, x in pos["centre_x"].items():
        add("real", None, "centre_x", f"wide 64x128, c_left {left}", x)
    for size, v in real["curve"].items():
        add("real", None, "laplacian_variance", f"original short edge {size}", v)
    add("real", None, "detector_floor_cutoff_rate", f"square, uncropped, noise std {real['floor']['noise_std']}", real["floor"]["rate"], real["floor"]["low"], real["floor"]["high"])
    for entry in results["runs"].values():
        m, s = entry["model"], entry["seed"]
        for metric, value in entry.get("table", {}).items():
            add(m, s, metric, "c_size 32x32, c_crop (0, 0)", value)
        if "crop" in entry:
            for label, r in entry["crop"]["cutoff"].items():
                add(m, s, "cutoff_rate", label, r["rate"], r["low"], r["high"])
            p = entry["crop"]["position"]
            add(m, s, "centre_x_slope", "wide 64x128, c_left 0..32", p["slope"], p["low"], p["high"])
            for left, x in p["centre_x"].items():
                add(m, s, "centre_x", f"wide 64x128, c_left {left}", x)
        for size, v in entry.get("curve", {}).items():
            add(m, s, "laplacian_variance", "any c_size" if size == "any" else f"c_size {size}x{size}", v)
    for name, row in (ablation or {}).get("rows", {}).items():
        p = row["position"]
        add(f"ablation {name}", 0, "centre_x_slope", "wide 64x128, c_left 0..32", p["slope"], p["low"], p["high"])
        for label, r in row["cutoff"].items():
            add(f"ablation {name}", 0, "cutoff_rate", label, r["rate"], r["low"], r["high"])
    return out


def _spread_verdict(name_a: str, a: list[float], name_b: str, b: list[float], what: str) -> str:
    """Whether the gap between two models' seed means exceeds either model's seed range."""
    gap = abs(np.mean(a) - np.mean(b))
    spread = max(np.ptp(a), np.ptp(b))
    verdict = "larger than" if gap > spread else "not larger than"
    return f"{what}: {name_a} {np.mean(a):.3g} against {name_b} {np.mean(b):.3g}, a gap of {gap:.3g}, {verdict} the seed spread ({spread:.3g}, the larger range over seeds)"


def reading(results: dict) -> list[str]:
    """Plain statements computed from the numbers: the goals of the experiment, met or not."""
    out = []
    models = _by_model(results)
    fd = {n: [e["table"]["frechet_distance"] for e in runs] for n, runs in models.items() if "table" in runs[0]}
    order = sorted(fd, key=lambda n: np.mean(fd[n]))
    same = [n for n in order if n in PAPER_ORDER] == PAPER_ORDER
    out.append(f"- Table 2: mean Frechet distance ranks the models {' < '.join(f'{n} ({np.mean(fd[n]):.3f})' for n in order)}; "
               f"the paper's order (size-conditioned < no conditioning < discarding small images) is {'reproduced' if same else 'not reproduced'}.")
    if "size" in fd:
        for other in ("no-cond", "drop-small"):
            if other in fd:
                out.append(f"- Table 2, {_spread_verdict('size', fd['size'], other, fd[other], 'Frechet distance')}.")
    real = {int(k): v for k, v in results["real"]["curve"].items()}
    lo, hi = min(real), max(real)
    out.append(f"- Fig. 3, real data: images from {lo} px originals have Laplacian variance {real[lo]:.3g} at 32 px, from {hi} px originals {real[hi]:.3g} ({real[hi] / max(real[lo], 1e-12):.0f}x): upscaled small images are what blur looks like here.")
    for name, runs in models.items():
        if "any" in runs[0].get("curve", {"any": None}):
            continue
        for e in runs:
            sizes = sorted(int(k) for k in e["curve"])
            values = [e["curve"][str(s)] for s in sizes]
            rho = spearman(sizes, values)
            ratio = values[-1] / max(values[0], 1e-12)
            goal = "(goal >= 0.9 and >= 5x: met)." if rho >= 0.9 and ratio >= 5 else "(goal >= 0.9 and >= 5x: not met)."
            if e.get("recipe") == "crop":
                goal = "(the crop recipe's price: v-prediction does not learn the size effect; Fig. 3's goal is for the size recipe)."
            out.append(f"- Fig. 3, {name} seed {e['seed']}: sharpness from c_size {sizes[0]} to {sizes[-1]} rises {ratio:.1f}x, Spearman {rho:.2f} against the requested size {goal}")
    crop_real = results["real"]["cutoff"]
    labels = list(crop_real)
    for name in ("size-crop-v", "no-cond-v"):
        for e in models.get(name, []):
            cut = e["crop"]["cutoff"]
            gaps = [abs(cut[q]["rate"] - crop_real[q]["rate"]) for q in labels]
            parts = ", ".join(f"{q}: {100 * cut[q]['rate']:.0f}% (real {100 * crop_real[q]['rate']:.0f}%)" for q in labels)
            out.append(f"- Fig. 4, {name} seed {e['seed']}: {parts}; largest gap to the real data {100 * max(gaps):.0f} points"
                       + (" (goal <= 10: met)." if name == "size-crop-v" and max(gaps) <= 0.10 else " (goal <= 10: not met)." if name == "size-crop-v" else "."))
            wide0 = next(q for q in labels if q.startswith("wide") and q.endswith("(0, 0)"))
            centre = next(q for q in labels if "centre" in q)
            rise = cut[wide0]["rate"] - cut[centre]["rate"]
            if name == "size-crop-v":
                out.append(f"- Fig. 4, {name} seed {e['seed']}: moving the wide original's crop from the centre to (0, 0) raises the cut-off rate by {100 * rise:+.0f} points "
                           f"(real data {100 * (crop_real[wide0]['rate'] - crop_real[centre]['rate']):+.0f}; goal >= 30: {'met' if rise >= 0.30 else 'not met'}); "
                           f"object centre slope against c_left {_slope(e['crop']['position'])} px per px (real {_slope(results['real']['position'])}).")
            elif name == "no-cond-v":
                rates = [cut[q]["rate"] for q in labels]
                out.append(f"- Fig. 4, no-cond-v seed {e['seed']}: it cannot see the query, so every query gets the same samples ({100 * rates[0]:.0f}% cut off): it answers every query alike by construction; "
                           f"its slope {_slope(e['crop']['position'])} is zero within the interval: {'yes' if e['crop']['position']['low'] <= 0 <= e['crop']['position']['high'] else 'no'}.")
    floor = results["real"]["floor"]
    out.append(f"- Fig. 4, the detector's floor: real uncropped square images made like samples (32 px, [-1, 1], noise std {floor['noise_std']}) read as cut off {_pct(floor)}; "
               "sample rates above that come from the samples, not the detector.")
    return out


def ablation_table(ablation: dict) -> list[str]:
    """The crop ablation as markdown: setting, slope, cut-off per query, live conditioning units."""
    queries = list(next(iter(ablation["real"].values()))["cutoff"])
    lines = ["| setting | object centre slope against c_left (px per px) | cut-off: " + " | ".join(queries) + " | sharpness at c_size 128 / 8 (Fig. 3) | live add_embedding units |",
             "| --- | --- | " + " | ".join("---" for _ in queries) + " | --- | --- |"]
    for mix, real in ablation["real"].items():
        lines.append(f"| real images, {mix} mix | {_slope(real['position'])} | " + " | ".join(_pct(real["cutoff"][q]) for q in queries) + " | | |")
    for name, row in ablation["rows"].items():
        live = row.get("cond_units_live")
        sharp = row["sharpness"]
        lines.append(f"| {row['setting']} | {_slope(row['position'])} | " + " | ".join(_pct(row["cutoff"][q]) for q in queries)
                     + f" | {sharp['128'] / max(sharp['8'], 1e-12):.1f}x | {live if live is not None else 'n/a'} of 128 |")
    return lines


FURTHER = {"upscaled": "Upscaled files: conditioning on the file, effective or true size",
           "micro-guidance": "Micro-condition guidance on the size model"}


def further_experiments(docs: Path) -> list[str]:
    """The pages of the other experiments found under ``docs`` (``docs/<name>/<name>.md``, written
    there by their commands), included one heading level down with their pictures."""
    lines = []
    for name, title in FURTHER.items():
        page = docs / name / f"{name}.md"
        if not page.exists():
            continue
        body = page.read_text().split("\n", 1)[1]  # without its title
        body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)
        body = re.sub(r"\]\((?!https?:|/)([^)]+)\)", rf"]({name}/\1)", body)  # links relative to docs/
        lines += [f"## {title}", "", f"From [{name}/{name}.md]({name}/{name}.md).", "", body.strip(), ""]
    return lines


def write_results(results: dict, commands: dict[str, tuple[str, list[str]]], figures: dict[str, Path], docs: Path, command: str, ablation: dict | None = None) -> Path:
    """docs/results.md (tables, figures, the exact commands) and docs/results.json (its numbers).

    Args:
        commands: model name -> (what the model sees, its training command).
    """
    rel = lambda p: os.path.relpath(p, docs)  # noqa: E731
    budget = results["budget"]
    models = _by_model(results)
    seeds = budget["seeds"]
    lines = [
        "# Micro-conditioning at 32 px: the paper's effects, measured",
        "",
        f"Produced by `{command}` on 2 CPU cores: {results['minutes']:.0f} minutes in all, {results.get('training_minutes', float('nan')):.0f} of them training "
        f"({len(results['runs'])} models, two at a time) and {sum(e.get('minutes', 0) for e in results['runs'].values()):.0f} sampling and measuring; "
        "every number below comes from that run and is also a row of [results.json](results.json).",
        "Metrics are in-domain (features of a small classifier trained on the real demo images, and a",
        "Laplacian-pyramid sliced Wasserstein distance), not Inception FID; compare them between rows, not with the paper.",
        f"{seeds} training seeds per model; sample counts: {budget['table_samples']} per Table 2 row, {budget['crop_samples']} per cut-off query and per crop offset, "
        f"{budget['curve_samples']} per curve point; {budget['sampler_steps']} DDIM steps, no guidance. Per-seed values are written `seed 0 / seed 1`.",
        "Brackets are 95% intervals (Wilson for rates, least squares for slopes).",
        "",
        "## Data and recipes",
        "",
        "Two recipes, one per question; each figure compares models that trained alike and differ only in what they see.",
        "",
        f"- **size recipe** (Table 2, Fig. 3): epsilon prediction, SDXL's objective and the pixel presets' default, {budget['steps']} steps, on the",
        "  web-like demo data (39% of the originals with a short edge below 32 px, shapes spread over 1:2..2:1).",
        f"- **crop recipe** (Fig. 4, Fig. 5): v-prediction (`--prediction-type v_prediction`), {budget.get('crop_steps', budget['steps'])} steps, on `--aspect-mix wide`:",
        "  the same emoji and sizes, a quarter of the originals square and every other one 2:1 landscape, so a 32 px training crop",
        "  cuts up to half of the image and the crop offset says which half. The real-data columns of Fig. 4 come from this data.",
        "",
        "Why two: in the crop ablation below, epsilon prediction never learned the crop (slope 0) and v-prediction never kept the",
        "size effect (sharpness 1.0-1.7x from c_size 8 to 128 where epsilon gives 4.7x); a capped v weighting, other learning rates",
        "and data mixes did not find a recipe with both within the budget.",
        "",
        "## Models (equal budgets within a recipe: the same steps, batch and seeds)",
        "",
        "| model | what it sees | command (seed 0; seed 1 adds `--seed 1` and its own `--out`) |",
        "| --- | --- | --- |",
    ]
    for name, (description, cmd) in commands.items():
        lines.append(f"| {name} | {description} | `{' '.join(cmd)}` |")
    lines += ["", "## Table 2: discard small images, or keep them with and without size conditioning", "",
              "Samples asked for c_size = 32x32, c_crop = (0, 0) (SDXL's inference default), classes cycled.", "",
              "| model | Frechet distance | KID | SWD x1e3 | sharpness (samples / real) | cut-off rate |", "| --- | --- | --- | --- | --- | --- |"]
    for name, runs in ((n, r) for n, r in models.items() if "table" in r[0]):
        cell = lambda key, fmt: " / ".join(format(e["table"][key], fmt) for e in runs)  # noqa: E731
        lines.append(f"| {name} | {cell('frechet_distance', '.3f')} | {cell('kid', '.4f')} | {cell('swd_x1e3', '.1f')} | {cell('sharpness_ratio', '.2f')} | "
                     + " / ".join(f"{100 * e['table']['cutoff_rate']:.0f}%" for e in runs) + " |")
    crop_models = [n for n in models if "crop" in models[n][0]]
    real = results["real"]
    lines += ["", "## Fig. 4: cut-off objects per query", "",
              "Share of samples whose object touches the border, beside real training images of the same shape cropped the same way.", "",
              "| query | real data | " + " | ".join(crop_models) + " |", "| --- | --- | " + " | ".join("---" for _ in crop_models) + " |"]
    for label, r in real["cutoff"].items():
        lines.append(f"| {label} | {_pct(r)} | " + " | ".join(" / ".join(_pct(e["crop"]["cutoff"][label]) for e in models[n]) for n in crop_models) + " |")
    lefts = list(real["position"]["centre_x"])
    lines += ["", "## Fig. 4: where the object sits, against the requested crop", "",
              "Mean object centre x (px) of samples asked for a 64x128 original cropped at c_left, and the least-squares slope over all samples.", "",
              "| | " + " | ".join(f"c_left {v}" for v in lefts) + " | slope |", "| --- | " + " | ".join("---" for _ in lefts) + " | --- |",
              "| real data | " + " | ".join(f"{real['position']['centre_x'][v]:.1f}" for v in lefts) + f" | {_slope(real['position'])} |"]
    for n in crop_models:
        for e in models[n]:
            p = e["crop"]["position"]
            lines.append(f"| {n} seed {e['seed']} | " + " | ".join(f"{p['centre_x'][v]:.1f}" for v in lefts) + f" | {_slope(p)} |")
    fig5 = next((p for k, p in figures.items() if k.startswith("Fig. 5")), None)
    if fig5:
        lines += ["", "## Fig. 5: the same seeds without and with micro-conditioning", "",
                  "Rows in pairs: no-cond-v, then size-crop-v asked for a 128x128 original, uncropped; the same seed and class in each column.", "",
                  f"![Fig. 5]({rel(fig5)})"]
    sizes = [int(s) for s in real["curve"]]
    lines += ["", "## Fig. 3: sharpness against the requested original size", "",
              "Mean Laplacian variance of 32 px images in [-1, 1] (higher is sharper); error bars span the seeds.", "", f"![sharpness curve]({rel(figures['curve'])})", "",
              "| requested c_size | " + " | ".join(str(s) for s in sizes) + " |", "| --- | " + " | ".join("---" for _ in sizes) + " |",
              "| real images of that size | " + " | ".join(f"{real['curve'][str(s)]:.3g}" for s in sizes) + " |"]
    for name, runs in ((n, r) for n, r in models.items() if "curve" in r[0]):
        for e in runs:
            lines.append(f"| {name} seed {e['seed']} | " + " | ".join(f"{v:.3g}" for v in _curve_values(e, sizes)) + " |")
    if ablation:
        lines += ["", "## Crop ablation: which recipe learns the crop condition", "",
                  f"Produced by `microcond experiment crop-ablation`: the tiny preset with size + crop conditioning, {ablation['budget']['steps']} steps, seed 0, "
                  f"{ablation['budget']['crop_samples']} samples per query and offset. A slope near the real data's means the model moves the object as the crop says; "
                  "0 means it ignores the crop. Live units: hidden units of the conditioning MLP (EMA weights) whose pre-activation exceeds -3 for some of 1,024 training samples.", "",
                  *ablation_table(ablation)]
    lines += ["", "## Grids", ""]
    for key, path in figures.items():
        if key != "curve" and not key.startswith("Fig. 5"):
            lines += [f"### {key}", "", f"![{key}]({rel(path)})", ""]
    lines += ["## Reading the results", "", *reading(results), ""]
    lines += further_experiments(docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "results.json").write_text(json.dumps({"command": command, "minutes": results["minutes"], "budget": budget, "rows": rows(results, ablation)}, indent=1, allow_nan=False) + "\n")
    path = docs / "results.md"
    path.write_text("\n".join(lines))
    return path
