"""The paper's evidence at small scale on the demo data, and ``microcond demo``.

``microcond experiment paper`` trains four tiny models with equal budgets at 32 px and measures
- Table 2: discarding small images vs upscaling them with and without size conditioning
  (Frechet distance and KID in an in-domain classifier's features, pyramid SWD);
- Fig. 3: sharpness of samples against the requested original size;
- Fig. 4: the cut-off rate per query, beside the real data's rate for the same query.
Models train two at a time, one thread each (two 1-thread processes outrun one 2-thread one on
this kind of machine, reference/cpu-measurements.md). Every stage is reused when done, so a
second run only redoes what is missing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from microcond.record import SIGNALS, MicroCond

TRAIN_SIZE = 32
MODELS = {
    "drop-small": ("images with a short edge below 32 px discarded, no micro-conditions (the paper's 512-only)", dict(signals=[], min_original_edge=TRAIN_SIZE)),
    "no-cond": ("all images (small ones upscaled), no micro-conditions", dict(signals=[])),
    "size": ("all images, size conditioning", dict(signals=["original_size"])),
    "size-crop": ("all images, size + crop (+ target) conditioning, as SDXL", dict(signals=list(SIGNALS))),
}
SQUARE = MicroCond((TRAIN_SIZE, TRAIN_SIZE), (0, 0), (TRAIN_SIZE, TRAIN_SIZE))  # SDXL's inference default
WIDE = (64, 128)  # a 1:2 original: resized to 32x64, so crops can cut 32 px off its width
CROP_QUERIES = {
    "square original, crop (0, 0)": MicroCond((128, 128), (0, 0), (TRAIN_SIZE, TRAIN_SIZE)),
    "wide original, centre crop (0, 16)": MicroCond(WIDE, (0, 16), (TRAIN_SIZE, TRAIN_SIZE)),
    "wide original, crop (0, 0)": MicroCond(WIDE, (0, 0), (TRAIN_SIZE, TRAIN_SIZE)),
}
SIZE_CURVE = (8, 12, 16, 24, 32, 48, 64, 128)


@dataclass(frozen=True)
class Budget:
    """What one experiment spends: training steps per model, samples per measurement."""

    steps: int = 3000
    table_samples: int = 500
    crop_samples: int = 300
    curve_samples: int = 96
    sampler_steps: int = 50
    feature_steps: int = 300


def ensure_demo_data(folder: Path, n_train: int = 6000, n_eval: int = 1000, progress: bool = True) -> Path:
    """Build the demo data set into ``folder`` unless a finished build of the same size is there."""
    from microcond.demodata import DemoDataConfig, build_demo_data, describe

    meta = folder / "demo-data.json"
    built = json.loads(meta.read_text()) if meta.is_file() else {}
    wanted = {"n_train": n_train, "n_eval": n_eval}
    if built.get("status") != "building" and {k: built.get("config", {}).get(k) for k in wanted} == wanted:
        return folder
    print(describe(build_demo_data(DemoDataConfig(out=str(folder), n_train=n_train, n_eval=n_eval), progress=progress)), file=sys.stderr)
    return folder


def train_command(name: str, data: Path, run: Path, steps: int, seed: int = 0, extra: dict | None = None) -> list[str]:
    """The ``microcond train`` command of one model (also printed in the results)."""
    overrides = {**MODELS[name][1], **(extra or {})} if name in MODELS else dict(extra or {})
    cmd = ["microcond", "train", "--preset", "tiny", "--data", str(data), "--out", str(run), "--num-classes", "9", "--steps", str(steps), "--seed", str(seed), "--sample-every", str(max(steps // 3, 1)), "--checkpoint-every", "500"]
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        cmd += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return cmd


def prepare_caches(data: Path, min_edges: set[int]) -> None:
    """Scan and fill the pixel caches once, before parallel runs would race to build them."""
    from microcond.data.buckets import parse_buckets
    from microcond.data.loader import default_cache_dir, open_source
    from microcond.data.pixelcache import PixelCache

    for edge in sorted(min_edges):
        source = open_source(data, min_original_edge=edge)
        PixelCache.build(source, parse_buckets(f"square:{TRAIN_SIZE}"), default_cache_dir())


def _steps_done(run: Path) -> int:
    rows = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    return json.loads(rows[-1])["step"] if rows else 0


def train_runs(commands: dict[str, list[str]], runs: dict[str, Path], steps: int, parallel: int = 2) -> None:
    """Run training commands ``parallel`` at a time with one thread each; one overall progress bar."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending = [n for n in commands if _steps_done(runs[n]) < steps]
    running: dict[str, subprocess.Popen] = {}
    logs = {}
    bar = tqdm(total=steps * len(commands), desc="train models", unit="step", dynamic_ncols=True)
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            runs[name].mkdir(parents=True, exist_ok=True)
            logs[name] = open(runs[name] / "train.log", "a")
            cmd = [sys.executable, "-m", "microcond.cli", *commands[name][1:], "--no-progress"]
            running[name] = subprocess.Popen(cmd, env=env, stdout=logs[name], stderr=subprocess.STDOUT)
        time.sleep(2)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                logs[name].close()
                del running[name]
                if proc.returncode != 0:
                    for other in running.values():
                        other.terminate()
                    raise RuntimeError(f"training {name} failed (exit {proc.returncode}); see {runs[name] / 'train.log'}")
        bar.n = sum(min(_steps_done(r), steps) for r in runs.values())
        bar.refresh()
    bar.close()


def real_crops(data: Path, query: MicroCond, limit: int = 2000) -> torch.Tensor:
    """Real training images whose original has the query's aspect ratio, cropped as the query says.

    This is the real-data rate "for the same query": square originals taken whole, or 1:2
    originals resized to cover 32 px and cropped at the query's offset.
    """
    import numpy as np
    import torch

    from microcond.data.crop import load_resized

    records = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines() if line.strip()]
    want = query.original_size[1] / query.original_size[0]
    out = []
    for r in records:
        h, w = r["original_size"]
        if abs(math.log((w / h) / want)) > 0.05 or min(h, w) < 16:
            continue
        resized, _ = load_resized(data / r["file"], query.target_size)  # (H, W, 3) covering 32x32
        (top, left), (th, tw) = query.crop_top_left, query.target_size
        out.append(resized[top : top + th, left : left + tw])  # in bounds: resized width is about 64
        if len(out) >= limit:
            break
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, 32, 32)


def real_sharpness_by_size(data: Path, bins: tuple[int, ...] = SIZE_CURVE) -> dict[int, float]:
    """Mean Laplacian variance of real 32 px training crops, by the original's short edge."""
    import numpy as np
    import torch

    from microcond.data.crop import decode_crop
    from microcond.evaluate import laplacian_variance

    records = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines() if line.strip()]
    groups: dict[int, list] = {b: [] for b in bins}
    for r in records:
        short = min(r["original_size"])
        nearest = min(bins, key=lambda b: abs(math.log(short / b)))
        if len(groups[nearest]) < 150:
            pixels, _ = decode_crop(data / r["file"], (TRAIN_SIZE, TRAIN_SIZE), np.random.default_rng(0), mode="center")
            groups[nearest].append(pixels)
    return {b: float(laplacian_variance(torch.from_numpy(np.stack(g)).permute(0, 3, 1, 2).float() / 127.5 - 1).mean()) for b, g in groups.items() if g}


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a binomial rate."""
    if n == 0:
        return (0.0, 1.0)
    p, z = k / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(flags) -> dict:
    """A cut-off rate with its 95% interval, from per-image flags."""
    k, n = int(sum(bool(f) for f in flags)), len(flags)
    low, high = wilson(k, n)
    return {"rate": k / max(n, 1), "low": low, "high": high, "n": n}


def measure(runs: dict[str, Path], data: Path, out: Path, budget: Budget, progress: bool = True) -> dict:
    """Sample every model for every measurement and compute the metrics; cached in results.json."""
    import torch

    from microcond.data.loader import default_cache_dir
    from microcond.demodata import PALETTE
    from microcond.evaluate import cut_off, evaluate, laplacian_variance, load_references
    from microcond.features import FeatureRecipe
    from microcond.grid import save_grid
    from microcond.inference import Model, Query

    results_path = out / "results.json"
    if results_path.exists():
        return json.loads(results_path.read_text())
    refs = load_references(data / "eval", (TRAIN_SIZE, TRAIN_SIZE), progress=progress)
    recipe = FeatureRecipe(steps=budget.feature_steps)
    cache = default_cache_dir() / "features"
    models = {name: Model(run) for name, run in runs.items()}
    n_classes = 9
    results: dict = {"models": {}, "crop": {}, "curve": {}, "budget": budget.__dict__}

    def draw(model: Model, micro: MicroCond, n: int, seed0: int = 0) -> torch.Tensor:
        query = Query(original_size=micro.original_size, crop_top_left=micro.crop_top_left, target_size=micro.target_size)
        return model.draw(query, list(range(seed0, seed0 + n)), [i % n_classes for i in range(n)], steps=budget.sampler_steps, progress=progress)

    # Table 2: SDXL's default query (c_size = target, uncropped) against the held-out references.
    table_samples = {}
    for name, model in models.items():
        samples = draw(model, SQUARE, budget.table_samples)
        table_samples[name] = samples
        report = evaluate(samples, refs.images, refs.labels, cache_dir=cache, palette=PALETTE, recipe=recipe, progress=progress)
        results["models"][name] = {"description": MODELS[name][0], "step": model.step, **report}
        save_grid(samples[:64], out / "grids" / f"samples-{name}.png", nrow=8, title=f"{name}: c_size 32x32, c_crop 0,0")

    # Fig. 4: cut-off rate per query, real data beside it. Models blind to a signal give the
    # same distribution whatever it asks, so their samples are reused across those queries.
    train = data / "train"
    for label, micro in CROP_QUERIES.items():
        real = real_crops(train, micro)
        row = {"real": rate(cut_off(real, PALETTE))}
        for name, model in models.items():
            if name == "drop-small":
                continue
            seen = [i for i, signal in enumerate(SIGNALS) if signal in model.cfg.signals]
            key = tuple(v for i in seen for v in micro.ids[2 * i : 2 * i + 2])  # the ids this model can see
            cached = results.setdefault("_samples", {}).setdefault(name, {})
            if str(key) not in cached:
                samples = table_samples[name] if not key else draw(model, micro, budget.crop_samples, seed0=10_000)
                cached[str(key)] = rate(cut_off(samples, PALETTE))
            row[name] = cached[str(key)]
        results["crop"][label] = row
    results.pop("_samples", None)

    # Fig. 3: sharpness against the requested original size (models that see c_size).
    results["curve"]["real"] = real_sharpness_by_size(train)
    ref_sharp = float(laplacian_variance(refs.images).mean())
    results["curve"]["reference_eval"] = ref_sharp
    for name, model in models.items():
        if "original_size" not in model.cfg.signals:
            results["curve"][name] = {"any": float(laplacian_variance(table_samples[name]).mean())}
            continue
        results["curve"][name] = {s: float(laplacian_variance(draw(model, MicroCond((s, s), (0, 0), SQUARE.target_size), budget.curve_samples, seed0=20_000)).mean()) for s in SIZE_CURVE}
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def sweep_grids(run: Path, out: Path, seeds: tuple[int, ...] = tuple(range(8)), steps: int = 50, label: int = 5) -> dict[str, Path]:
    """The Fig. 3 (c_size) and Fig. 4 (c_crop of a wide original) sweep grids of one run."""
    from microcond.grid import save_grid
    from microcond.inference import Model, Query

    model = Model(run)
    grids = {}
    for kind, values, query in (
        ("original_size", [8, 16, 32, 64, 128], Query(label=label)),
        ("crop", [(0, 0), (0, 8), (0, 16), (0, 24), (0, 32)], Query(original_size=WIDE, label=label)),
    ):
        path = out / f"sweep-{kind}-{run.name}.png"
        if not path.exists():
            images, columns = model.sweep(kind, values, seeds, query, steps=steps)
            what = "c_size sweep (paper Fig. 3)" if kind == "original_size" else f"c_crop sweep of a {WIDE[0]}x{WIDE[1]} original (paper Fig. 4)"
            save_grid(images.flatten(0, 1), path, nrow=len(values), row_labels=[f"seed {s}" for s in seeds], col_labels=columns, title=f"{run.name}: {what}")
        grids[kind] = path
    return grids


def plot_curve(results: dict, path: Path) -> Path:
    """Sharpness (Laplacian variance) against the requested original size, real data beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    real = {int(k): v for k, v in results["curve"]["real"].items()}
    ax.plot(list(real), list(real.values()), "k--o", label="real training images, by original short edge")
    for name, curve in results["curve"].items():
        if name in ("real", "reference_eval"):
            continue
        if "any" in curve:
            ax.axhline(curve["any"], ls=":", lw=1.5, label=f"{name} (cannot be asked)", color="C3" if name == "no-cond" else "C4")
        else:
            sizes = [int(k) for k in curve]
            ax.plot(sizes, list(curve.values()), "-o", label=f"{name}: samples, by requested c_size")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(SIZE_CURVE, [str(s) for s in SIZE_CURVE])
    ax.set_xlabel("original short edge (px): requested c_size for samples, true size for real images")
    ax.set_ylabel("sharpness: Laplacian variance at 32 px")
    ax.set_title("Fig. 3 at 32 px: sharpness against the requested original size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _pct(r: dict) -> str:
    return f"{100 * r['rate']:.0f}% [{100 * r['low']:.0f}, {100 * r['high']:.0f}]"


def write_results(results: dict, commands: dict[str, list[str]], figures: dict[str, Path], docs: Path, command: str, minutes: float) -> Path:
    """docs/results.md: the tables, the figures and the exact commands."""
    rel = lambda p: os.path.relpath(p, docs)  # noqa: E731
    lines = [
        "# Micro-conditioning at 32 px: the paper's effects, measured",
        "",
        f"Produced by `{command}` on 2 CPU cores: {minutes:.0f} minutes of training and measuring; every number below comes from that run.",
        "Metrics are in-domain (features of a small classifier trained on the real demo images, and a",
        "Laplacian-pyramid sliced Wasserstein distance), not Inception FID; compare them between rows, not with the paper.",
        f"One training seed per model (the budget allows no more); sample counts: {results['budget']['table_samples']} per",
        f"Table 2 row, {results['budget']['crop_samples']} per cut-off query, {results['budget']['curve_samples']} per curve point; "
        f"{results['budget']['sampler_steps']} DDIM steps, no guidance.",
        "Brackets are 95% Wilson intervals; KID is mean ± std over subsets.",
        "",
        "## Models (equal budgets: the same steps and batch)",
        "",
        "| model | what it sees | command |",
        "| --- | --- | --- |",
    ]
    for name, cmd in commands.items():
        lines.append(f"| {name} | {MODELS[name][0]} | `{' '.join(cmd)}` |")
    lines += ["", "## Table 2: discard small images, or keep them with and without size conditioning", "",
              "Samples asked for c_size = 32x32, c_crop = (0, 0) (SDXL's inference default), classes cycled.", "",
              "| model | Frechet distance | KID | SWD x1e3 | sharpness (samples / real) | cut-off rate |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, m in results["models"].items():
        f = m["fidelity"]
        ratio = m["sharpness"]["laplacian_variance"]["ratio"]
        lines.append(f"| {name} | {f['frechet_distance']:.3f} | {f['kid']:.4f} ± {f['kid_std']:.4f} | {f['swd_x1e3']['mean']:.1f} | {ratio:.2f} | {100 * m['cutoff_rate']['samples']:.0f}% |")
    lines += ["", "## Fig. 4: cut-off objects per query", "",
              "Share of samples whose object touches the border, beside real training images of the same shape cropped the same way.",
              "A model blind to a signal answers every value of it alike.", "",
              "| query | real data | " + " | ".join(n for n in MODELS if n != "drop-small") + " |",
              "| --- | --- | " + " | ".join("---" for n in MODELS if n != "drop-small") + " |"]
    for label, row in results["crop"].items():
        lines.append(f"| {label} | {_pct(row['real'])} | " + " | ".join(_pct(row[n]) for n in MODELS if n != "drop-small") + " |")
    lines += ["", "## Fig. 3: sharpness against the requested original size", "",
              "Mean Laplacian variance of 32 px images in [-1, 1] (higher is sharper).", "", f"![sharpness curve]({rel(figures['curve'])})", "",
              "| requested c_size | " + " | ".join(str(s) for s in SIZE_CURVE) + " |", "| --- | " + " | ".join("---" for _ in SIZE_CURVE) + " |"]
    real = {int(k): v for k, v in results["curve"]["real"].items()}
    lines.append("| real images of that size | " + " | ".join(f"{real.get(s, float('nan')):.3g}" for s in SIZE_CURVE) + " |")
    for name, curve in results["curve"].items():
        if name in ("real", "reference_eval"):
            continue
        values = [curve["any"]] * len(SIZE_CURVE) if "any" in curve else [curve[str(s)] if str(s) in curve else curve[s] for s in SIZE_CURVE]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3g}" for v in values) + " |")
    lines += ["", "## Grids", ""]
    for key, path in figures.items():
        if key != "curve":
            lines += [f"### {key}", "", f"![{key}]({rel(path)})", ""]
    lines += ["## Reading the results", "", *reading(results), ""]
    docs.mkdir(parents=True, exist_ok=True)
    path = docs / "results.md"
    path.write_text("\n".join(lines))
    return path


def reading(results: dict) -> list[str]:
    """Plain statements computed from the numbers, so that a rerun can never contradict its page."""
    out = []
    fd = {n: m["fidelity"]["frechet_distance"] for n, m in results["models"].items()}
    order = sorted(fd, key=fd.get)
    paper = ["size", "no-cond", "drop-small"]  # the paper's Table 2 order, best first
    same = [n for n in order if n in paper] == paper
    out.append(f"- Table 2: Frechet distance ranks the models {' < '.join(f'{n} ({fd[n]:.3f})' for n in order)}; "
               f"the paper's order (size-conditioned < no conditioning < discarding small images) is {'reproduced' if same else 'not reproduced'} by this run.")
    if {"size", "no-cond", "drop-small"} <= set(fd):
        beats = fd["size"] < min(fd["no-cond"], fd["drop-small"])
        out.append(f"- Table 2, the paper's main claim: the size-conditioned model is {'better than both baselines' if beats else 'not better than both baselines'} "
                   f"(KID {results['models']['size']['fidelity']['kid']:.4f} against {results['models']['no-cond']['fidelity']['kid']:.4f} and "
                   f"{results['models']['drop-small']['fidelity']['kid']:.4f}); with one training seed per model, differences of this size may not survive a second seed.")
    curve = results["curve"]
    real = {int(k): v for k, v in curve["real"].items()}
    lo, hi = min(real), max(real)
    out.append(f"- Fig. 3, real data: images from {lo} px originals have Laplacian variance {real[lo]:.3g} at 32 px, from {hi} px originals {real[hi]:.3g} ({real[hi] / max(real[lo], 1e-12):.0f}x): upscaled small images are what blur looks like here.")
    for name, values in curve.items():
        if name in ("real", "reference_eval") or "any" in values:
            continue
        v = {int(k): x for k, x in values.items()}
        a, b = v[min(v)], v[max(v)]
        out.append(f"- Fig. 3, {name}: asking for c_size {min(v)} gives {a:.3g}, c_size {max(v)} gives {b:.3g} ({b / max(a, 1e-12):.1f}x); "
                   + ("sharpness rises with the requested size, as in the paper." if b > a else "no rise with the requested size in this run."))
    for name, values in curve.items():
        if name not in ("real", "reference_eval") and "any" in values:
            out.append(f"- Fig. 3, {name}: one sharpness whatever is asked, {values['any']:.3g}.")
    crop = results["crop"]
    for label, row in crop.items():
        parts = ", ".join(f"{n} {100 * row[n]['rate']:.0f}%" for n in row if n != "real")
        out.append(f"- Fig. 4, {label}: real data {100 * row['real']['rate']:.0f}%; samples: {parts}.")
    square = next((r for k, r in crop.items() if k.startswith("square")), None)
    if square:
        floor = min(r["rate"] for n, r in square.items() if n != "real")
        out.append(f"- Fig. 4, the detector's floor: asked for an uncropped square original, every model's samples still read as cut off {100 * floor:.0f}% of the time or more "
                   f"(real data {100 * square['real']['rate']:.0f}%): stray blobs and noisy backgrounds that touch the border, which a longer training removes; rates below that floor carry no signal.")
    wide0 = next((r for k, r in crop.items() if k.endswith("crop (0, 0)") and k.startswith("wide")), None)
    centre = next((r for k, r in crop.items() if "centre" in k), None)
    if wide0 and centre and "size-crop" in wide0:
        d_model = wide0["size-crop"]["rate"] - centre["size-crop"]["rate"]
        d_real = wide0["real"]["rate"] - centre["real"]["rate"]
        out.append(f"- Fig. 4, what the crop signal adds: moving c_crop of the wide original from the centre to (0, 0) changes the size-crop model's cut-off rate by {100 * d_model:+.0f} points "
                   f"(real data: {100 * d_real:+.0f} points); the models without the crop signal cannot express this difference.")
    return out


def run_paper(out: Path, docs: Path | None, budget: Budget = Budget(), parallel: int = 2) -> Path:
    """Train the four models, measure, and write the results page; reuse whatever is done."""
    out.mkdir(parents=True, exist_ok=True)
    started = out / "started"  # the first run's start; a rerun that reuses everything reports that run's time
    if not started.exists():
        started.touch()
    data = ensure_demo_data(out / "data")
    runs = {name: out / "runs" / name for name in MODELS}
    commands = {name: train_command(name, data / "train", runs[name], budget.steps) for name in MODELS}
    prepare_caches(data / "train", {0, TRAIN_SIZE})
    train_runs(commands, runs, budget.steps, parallel)
    results = measure(runs, data, out, budget)
    if "minutes" not in results:  # training and measuring, from the first start
        results["minutes"] = (time.time() - started.stat().st_mtime) / 60
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    figures = {"curve": plot_curve(results, out / "grids" / "sharpness-curve.png")}
    for name in ("size-crop", "size", "no-cond"):
        for kind, path in sweep_grids(runs[name], out / "grids", steps=budget.sampler_steps).items():
            figures[f"{kind} sweep, {name}"] = path
    for name in MODELS:
        figures[f"samples, {name}"] = out / "grids" / f"samples-{name}.png"
    docs = docs or out
    if docs != out:  # copy the pictures next to the page so that it renders in the repository
        import shutil

        (docs / "results").mkdir(parents=True, exist_ok=True)
        figures = {k: Path(shutil.copy(p, docs / "results" / p.name)) for k, p in figures.items()}
    command = f"microcond experiment paper --out {out}" + (f" --docs {docs}" if docs != out else "") + f" --steps {budget.steps}"
    return write_results(results, commands, figures, docs, command, results["minutes"])
