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

from microcond.base.files import atomic_path, atomic_write_text
from microcond.experiments.recipe import describe_recipe, recipe_changes, sampled_with
from microcond.metrics.stats import spearman

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
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
        sharp = row["sharpness"]
        add(f"ablation {name}", 0, "sharpness_ratio_128_to_8", "c_size 128x128 / 8x8", sharp["128"] / max(sharp["8"], 1e-12))
        for metric, value in row.get("table", {}).items():
            add(f"ablation {name}", 0, metric, "c_size 32x32, c_crop (0, 0)", value)
        for metric in ("cond_units_live", "images_seen", "guidance"):
            if metric in row:
                add(f"ablation {name}", 0, metric, "", row[metric])
    return out


def _spread_verdict(name_a: str, a: list[float], name_b: str, b: list[float], what: str) -> str:
    """Whether the gap between two models' seed means exceeds either model's seed range."""
    gap = abs(np.mean(a) - np.mean(b))
    spread = max(np.ptp(a), np.ptp(b))
    verdict = "larger than" if gap > spread else "not larger than"
    return f"{what}: {name_a} {np.mean(a):.3g} against {name_b} {np.mean(b):.3g}, a gap of {gap:.3g}, {verdict} the seed spread ({spread:.3g}, the larger range over seeds)"


def _goal(ok: bool) -> str:
    return "met" if ok else "not met"


def reading(results: dict) -> list[str]:
    """Plain statements computed from the numbers: the goals of the experiment, met or not."""
    out = []
    models = _by_model(results)
    fd = {n: [e["table"]["frechet_distance"] for e in runs] for n, runs in models.items() if "table" in runs[0]}
    order = sorted(fd, key=lambda n: np.mean(fd[n]))
    conditioned = [n for n in ("size-crop", "size") if n in fd]
    out.append(f"- Table 2: mean Frechet distance ranks the models {' < '.join(f'{n} ({np.mean(fd[n]):.3f})' for n in order)}; "
               f"a size-conditioned model ranks first, as in the paper: {'yes' if order and order[0] in conditioned else 'no'}.")
    if conditioned:
        best = min(conditioned, key=lambda n: np.mean(fd[n]))
        for other in ("no-cond", "drop-small"):
            if other in fd:
                out.append(f"- Table 2, {_spread_verdict(best, fd[best], other, fd[other], 'Frechet distance')}.")
    for name, runs in models.items():
        if "class_accuracy" in runs[0].get("table", {}):
            parts = ", ".join(f"seed {e['seed']} {100 * e['table']['class_accuracy']:.0f}% ({e['table']['class_accuracy_ratio']:.2f} of the classifier's "
                              f"{100 * e['table']['held_out_accuracy']:.0f}% on held-out real images)" for e in runs)
            goal = f" (goal >= 0.70 of it: {_goal(all(e['table']['class_accuracy_ratio'] >= 0.7 for e in runs))})" if name == "size-crop" else ""
            out.append(f"- Class accuracy of {name}'s samples: {parts}{goal}.")
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
            out.append(f"- Fig. 3, {name} seed {e['seed']}: sharpness from c_size {sizes[0]} to {sizes[-1]} rises {ratio:.1f}x, Spearman {rho:.2f} against the "
                       f"requested size (goal >= 5x and >= 0.9: {_goal(rho >= 0.9 and ratio >= 5)}).")
    crop_real = results["real"]["cutoff"]
    labels = list(crop_real)
    wide0 = next(q for q in labels if q.startswith("wide") and q.endswith("(0, 0)"))
    centre = next(q for q in labels if "centre" in q)
    real_slope = results["real"]["position"]["slope"]
    for name, runs in models.items():
        for e in runs:
            if "crop" not in e:
                continue
            cut = e["crop"]["cutoff"]
            if "crop_top_left" not in e.get("signals", ["crop_top_left"]):
                rates = sorted({round(100 * cut[q]["rate"]) for q in labels})
                out.append(f"- Fig. 4, {name} seed {e['seed']}: blind to the crop, it answers the queries with {', '.join(f'{r}%' for r in rates)} cut off "
                           f"and an object slope of {_slope(e['crop']['position'])}.")
                continue
            gaps = [abs(cut[q]["rate"] - crop_real[q]["rate"]) for q in labels]
            parts = ", ".join(f"{q}: {100 * cut[q]['rate']:.0f}% (real {100 * crop_real[q]['rate']:.0f}%)" for q in labels)
            rise = cut[wide0]["rate"] - cut[centre]["rate"]
            slope = e["crop"]["position"]["slope"]
            out.append(f"- Fig. 4, {name} seed {e['seed']}: {parts}; largest gap to the real data {100 * max(gaps):.0f} points (goal <= 10: {_goal(max(gaps) <= 0.10)}); "
                       f"the wide original's crop moved from the centre to (0, 0) raises the cut-off rate by {100 * rise:+.0f} points "
                       f"(real {100 * (crop_real[wide0]['rate'] - crop_real[centre]['rate']):+.0f}; goal >= 30: {_goal(rise >= 0.30)}); "
                       f"object centre slope {_slope(e['crop']['position'])} px per px (real {real_slope:+.2f}; goal within 0.1: {_goal(abs(slope - real_slope) <= 0.1)}).")
    floor = results["real"]["floor"]
    out.append(f"- Fig. 4, the detector's floor: real uncropped square images made like samples (32 px, [-1, 1], noise std {floor['noise_std']}) read as cut off {_pct(floor)}; "
               "sample rates above that come from the samples, not the detector.")
    return out


def ablation_table(ablation: dict) -> list[str]:
    """The recipe ablation as markdown: setting, both effects, fidelity, recognisability, live units, images."""
    queries = list(next(iter(ablation["real"].values()))["cutoff"])
    lines = ["| setting | object centre slope against c_left (px per px) | cut-off: " + " | ".join(queries)
             + " | sharpness at c_size 128 / 8 (Fig. 3) | Frechet distance | class accuracy (of held-out real) | live add_embedding units | images seen |",
             "| --- | --- | " + " | ".join("---" for _ in queries) + " | --- | --- | --- | --- | --- |"]
    for mix, real in ablation["real"].items():
        lines.append(f"| real images, {mix} mix | {_slope(real['position'])} | " + " | ".join(_pct(real["cutoff"][q]) for q in queries) + " | | | | | |")
    for name, row in ablation["rows"].items():
        live = row.get("cond_units_live")
        sharp, table = row["sharpness"], row.get("table", {})
        fidelity = f"{table['frechet_distance']:.2f} | {100 * table['class_accuracy']:.0f}% ({table['class_accuracy_ratio']:.2f})" if table else " | "
        cells = [row["setting"], _slope(row["position"]), *(_pct(row["cutoff"][q]) for q in queries), f"{sharp['128'] / max(sharp['8'], 1e-12):.1f}x",
                 fidelity, f"{live if live is not None else 'n/a'} of {row.get('overrides', {}).get('time_embed_dim') or 128}",
                 f"{row['images_seen']:,}" if "images_seen" in row else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", *best_reached(ablation)]


def best_reached(ablation: dict) -> list[str]:
    """One line per goal of the size+crop model: the ablation row that came nearest, with its images."""
    rows = dict(ablation["rows"])  # sampled with or without guidance: both are recipes a user can run
    if not rows:
        return []
    real = next(iter(ablation["real"].values()))
    queries = list(real["cutoff"])
    ratio = lambda r: r["sharpness"]["128"] / max(r["sharpness"]["8"], 1e-12)  # noqa: E731
    gap = lambda r: max(abs(r["cutoff"][q]["rate"] - real["cutoff"][q]["rate"]) for q in queries)  # noqa: E731
    lift = lambda r: r["cutoff"][queries[2]]["rate"] - r["cutoff"][queries[1]]["rate"]  # noqa: E731
    slope = lambda r: abs(r["position"]["slope"] - real["position"]["slope"])  # noqa: E731
    accuracy = lambda r: r.get("table", {}).get("class_accuracy_ratio", 0.0)  # noqa: E731
    goals = [("Fig. 3 sharpness c_size 128 / 8 (goal >= 5x)", max(rows, key=lambda n: ratio(rows[n])), lambda r: f"{ratio(r):.1f}x"),
             ("largest cut-off gap to the real data (goal <= 10 points)", min(rows, key=lambda n: gap(rows[n])), lambda r: f"{100 * gap(r):.0f} points"),
             ("cut-off lift, wide original centre -> (0, 0) (goal >= 30 points)", max(rows, key=lambda n: lift(rows[n])), lambda r: f"{100 * lift(r):+.0f} points"),
             ("object centre slope (goal within 0.1 of the real one)", min(rows, key=lambda n: slope(rows[n])),
              lambda r: f"{r['position']['slope']:+.2f} (real {real['position']['slope']:+.2f})"),
             ("class accuracy against held-out real (goal >= 0.70)", max(rows, key=lambda n: accuracy(rows[n])), lambda r: f"{accuracy(r):.2f}")]
    return ["Best reached per goal:", ""] + [f"- {goal}: {show(rows[name])} by {name} ({rows[name]['images_seen']:,} images)."
                                             for goal, name, show in goals]


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
        *([f"**The pixel presets' recipe has changed since this run** ({', '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in changes.items())}; "
           "the recipe ablation at the end of the page shows why). The numbers here are the recipe below; the command above "
           "now trains the new one (give it a new `--out`)."] if (changes := recipe_changes(results.get("recipe", {}))) else []),
        "Metrics are in-domain (features of a small classifier trained on the real demo images, and a",
        "Laplacian-pyramid sliced Wasserstein distance), not Inception FID; compare them between rows, not with the paper.",
        f"{seeds} training seeds per model; sample counts: {budget['table_samples']} per Table 2 row, {budget['crop_samples']} per cut-off query and per crop offset, "
        f"{budget['curve_samples']} per curve point; {budget['sampler_steps']} DDIM steps, {sampled_with(budget)}. Per-seed values are written `seed 0 / seed 1`.",
        "Brackets are 95% intervals (Wilson for rates, least squares for slopes).",
        "",
        "## Data and recipe",
        "",
        f"One recipe for every model: {describe_recipe(results.get('recipe', {}))}, {budget['steps']} steps of batch 32 "
        f"({budget['steps'] * 32:,} images per model). The data is the demo data with `--aspect-mix wide`: emoji of 9 classes on",
        "plain backgrounds, 40% of the originals with a short edge below the 32 px training size (so the original size says how",
        "blurred a training image is), a quarter of them square and every other one 2:1 landscape (so a 32 px training crop cuts",
        "up to half of the image and the crop offset says which half). The models differ only in what they see, as the paper's do.",
        "",
        "## Models (equal budgets: the same recipe, steps, batch and seeds)",
        "",
        "| model | what it sees | command (seed 0; seed 1 adds `--seed 1` and its own `--out`) |",
        "| --- | --- | --- |",
    ]
    for name, (description, cmd) in commands.items():
        lines.append(f"| {name} | {description} | `{' '.join(cmd)}` |")
    lines += ["", "## Table 2: discard small images, or keep them with and without size conditioning", "",
              "Samples asked for c_size = 32x32, c_crop = (0, 0) (SDXL's inference default), classes cycled.", "",
              "Class accuracy: the share of samples that the metrics' classifier puts in the class they were asked for; in brackets, that share",
              "divided by the classifier's accuracy on real training images it never saw (originals of at least 32 px, made like samples).", "",
              "| model | Frechet distance | KID | SWD x1e3 | class accuracy (of held-out real) | sharpness (samples / real) | cut-off rate |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, runs in ((n, r) for n, r in models.items() if "table" in r[0]):
        cell = lambda key, fmt: " / ".join(format(e["table"][key], fmt) for e in runs)  # noqa: E731
        accuracy = " / ".join(f"{100 * e['table']['class_accuracy']:.0f}% ({e['table']['class_accuracy_ratio']:.2f})" for e in runs)
        lines.append(f"| {name} | {cell('frechet_distance', '.3f')} | {cell('kid', '.4f')} | {cell('swd_x1e3', '.1f')} | {accuracy} | {cell('sharpness_ratio', '.2f')} | "
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
                  "Rows in pairs: no-cond, then size-crop asked for a 128x128 original, uncropped; the same seed and class in each column.", "",
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
        lines += ["", "## Recipe ablation: which recipe learns both effects", "",
                  f"Produced by `microcond experiment crop-ablation`: the tiny preset with size + crop + target conditioning (the size-crop model), "
                  f"{ablation['budget']['steps']} steps, seed 0, {ablation['budget']['crop_samples']} samples per query and offset and "
                  f"{2 * ablation['budget']['crop_samples']} for the Frechet distance and class accuracy (SDXL's default query). A slope near the real data's means the "
                  "model moves the object as the crop says; 0 means it ignores the crop. Live units: hidden units of the conditioning MLP (EMA weights) whose "
                  "pre-activation exceeds -3 for some of 1,024 training samples. The earlier ablation (epsilon and v at uniform timesteps without centred "
                  "features, capped v weights, other learning rates and aspect mixes; docs/results.md before the one-model recipe) measured 1 to 12 live units "
                  "in every row.", "",
                  *ablation_table(ablation)]
    lines += ["", "## Grids", ""]
    for key, path in figures.items():
        if key != "curve" and not key.startswith("Fig. 5"):
            lines += [f"### {key}", "", f"![{key}]({rel(path)})", ""]
    lines += ["## Reading the results", "", *reading(results), ""]
    lines += further_experiments(docs)
    docs.mkdir(parents=True, exist_ok=True)
    atomic_write_text((docs / "results.json"), json.dumps({"command": command, "minutes": results["minutes"], "budget": budget, "rows": rows(results, ablation)}, indent=1, allow_nan=False) + "\n")
    path = docs / "results.md"
    atomic_write_text(path, "\n".join(lines))
    return path
