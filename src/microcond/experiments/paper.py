"""The paper's evidence at small scale on the demo data, and the recipe ablation.

``microcond experiment paper`` trains four tiny models with one recipe (the pixel presets'
defaults), each with two training seeds and equal budgets, at 32 px on the wide demo data, and
measures
- Table 2: discarding small images vs upscaling them with and without size conditioning
  (Frechet distance and KID in an in-domain classifier's features, pyramid SWD, and how often
  that classifier recognises the class a sample was asked for);
- Fig. 3: sharpness of samples against the requested original size;
- Fig. 4: the cut-off rate per query and the object's position against c_crop, beside the real
  data's values for the same query (:mod:`microcond.metrics.cropeffect`);
- Fig. 5: the same seeds from the model without and with micro-conditions.
``microcond experiment crop-ablation`` trains the recipe variants behind the pixel presets'
defaults (objective, noise levels, loss weighting, conditioning path, data mix) and measures
both effects, fidelity and recognisability of each.

Models train two at a time, one thread each (two 1-thread processes outrun one 2-thread one on
this kind of machine, reference/cpu-measurements.md). Every stage is reused when done, so a
second run only redoes what is missing.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from microcond.base.files import atomic_write_text
from microcond.cond.record import SIGNALS, MicroCond
from microcond.experiments.launch import ensure_demo_data, prepare_caches, train_runs
from microcond.metrics.cropeffect import CROP_LEFTS, CROP_QUERIES, TRAIN_SIZE, WIDE, model_effect, real_crops, real_effect
from microcond.metrics.stats import rate

# One recipe, the pixel presets' defaults (microcond.train.config.PRESETS), on one data set: the wide
# mix, where a quarter of the originals is square and every other one 2:1 (so a 32 px crop cuts
# up to half of the image and the offset says which half) and 40% of the originals are smaller
# than 32 px (so the original size says how blurred an image is). The models differ only in what
# they see, as the paper's do.
MIX = "wide"
MODELS = {  # name -> (what it sees, train overrides)
    "drop-small": ("images with a short edge below 32 px discarded, no micro-conditions (the paper's 512-only)", dict(signals=[], min_original_edge=TRAIN_SIZE)),
    "no-cond": ("all images (small ones upscaled), no micro-conditions", dict(signals=[])),
    "size": ("all images, size conditioning", dict(signals=["original_size"])),
    "size-crop": ("all images, size + crop + target conditioning, as SDXL", dict(signals=list(SIGNALS))),
}
SQUARE = MicroCond((TRAIN_SIZE, TRAIN_SIZE), (0, 0), (TRAIN_SIZE, TRAIN_SIZE))  # SDXL's inference default
SIZE_CURVE = (8, 12, 16, 24, 32, 48, 64, 128)
N_CLASSES = 9
# Guidance of every measured sample and of the demo's, from the recipe ablation (docs/results.md,
# row v-sd4-center-cls1-w256 at class guidance 4 and micro-condition guidance 4): the class is
# recognised as often as in held-out real images (0.85 of their rate), the crop moves the object as
# in the real data and the requested original size sets the detail (6.7x sharper at 128 than at 8).
# Equal scales are plain guidance against the null class and null micro-conditions.
GUIDANCE = 4.0
MICRO_GUIDANCE = 4.0  # 0 = none

@dataclass(frozen=True)
class Budget:
    """What one experiment spends: training steps and seeds per model, samples per measurement."""

    steps: int = 2000  # per model: 64,000 images at the tiny preset's batch of 32
    seeds: int = 2
    table_samples: int = 500
    crop_samples: int = 200  # per cut-off query and per offset of the position sweep
    curve_samples: int = 96
    sampler_steps: int = 25  # DDIM; the crop measures at 25 and 50 steps agree within their intervals
    feature_steps: int = 300
    guidance: float = GUIDANCE  # class guidance of every measured sample
    micro_guidance: float = MICRO_GUIDANCE  # micro-condition guidance, 0 = none (models with micro-conditions)

    def __post_init__(self) -> None:
        from microcond.base.settings import check_counts, check_scales

        check_scales(self, ("guidance", "micro_guidance"))
        check_counts(self)

    def sampling(self, signals) -> dict:
        """The guidance of the measured samples of a model that sees ``signals``, as
        :class:`microcond.sample.run.Query` fields (no micro-condition guidance for a model without
        micro-conditions: it would cost a pass)."""
        return {"guidance": self.guidance, "micro_guidance": (self.micro_guidance or None) if signals else None}


def train_overrides(name: str, data: Path, steps: int, seed: int = 0, extra: dict | None = None) -> dict:
    """The tiny preset's overrides (TrainConfig fields) for one model of :data:`MODELS`."""
    return {"data": str(data), "num_classes": N_CLASSES, "steps": steps, "seed": seed, "sample_every": max(steps // 3, 1), "checkpoint_every": 500,
            **MODELS[name][1], **(extra or {})}


def train_command(name: str, data: Path, run: Path, steps: int, seed: int = 0, extra: dict | None = None) -> list[str]:
    """The ``microcond train`` command of one model of :data:`MODELS` (also printed in the results)."""
    overrides = train_overrides(name, data, steps, seed, extra)
    cmd = ["microcond", "train", "--preset", "tiny", "--data", overrides.pop("data"), "--out", str(run)]
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        cmd += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    return cmd


def real_sharpness_by_size(data: Path, bins: tuple[int, ...] = SIZE_CURVE) -> dict[int, float]:
    """Mean Laplacian variance of real 32 px training crops, by the original's short edge."""
    import numpy as np

    from microcond.data.crop import decode_crop
    from microcond.data.metadata import read_metadata
    from microcond.data.pixels import stack_hwc
    from microcond.metrics.evaluate import laplacian_variance

    records = [record for _, record in read_metadata(data)]
    groups: dict[int, list] = {b: [] for b in bins}
    for r in records:
        short = min(r["original_size"])
        nearest = min(bins, key=lambda b: abs(math.log(short / b)))
        if len(groups[nearest]) < 150:
            pixels, _ = decode_crop(data / r["file"], (TRAIN_SIZE, TRAIN_SIZE), np.random.default_rng(0), mode="center")
            groups[nearest].append(pixels)
    return {b: float(laplacian_variance(stack_hwc(g)).mean()) for b, g in groups.items() if g}


def detector_floor(data: Path, palette, noise: float = 0.05) -> dict:
    """Cut-off rate of real uncropped square images made like samples: 32 px, [-1, 1], plus
    Gaussian noise of std ``noise``. What the detector reads where the truth is 0%."""
    import torch

    from microcond.metrics.evaluate import cut_off

    real = real_crops(data, CROP_QUERIES["square original, crop (0, 0)"])
    noisy = (real + noise * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    return {"noise_std": noise, **rate(cut_off(noisy, palette))}


def _save(results: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")


def held_out_references(data: Path, progress: bool = True):
    """Real training images the metrics' classifier never saw (it trains on the eval split), made
    like samples, from originals at least as large as the training size: the recognisability that
    samples are compared with."""
    from microcond.metrics.evaluate import load_references

    return load_references(data / "train", (TRAIN_SIZE, TRAIN_SIZE), progress=progress, min_original_edge=TRAIN_SIZE, limit=1000)


def table_scores(model, refs, held, n: int, budget: Budget, query: MicroCond = SQUARE, guidance: float = 1.0, micro_guidance: float | None = None,
                 progress: bool = True) -> tuple[dict, "torch.Tensor"]:
    """Table 2's numbers for one run: ``n`` samples asked for ``query`` (classes cycled) against
    the references, and the share the classifier recognises beside its held-out real accuracy."""
    from microcond.data.source import default_cache_dir
    from microcond.demodata.build import PALETTE
    from microcond.metrics.evaluate import evaluate
    from microcond.metrics.features import FeatureRecipe
    from microcond.sample.run import Query

    labels = [i % N_CLASSES for i in range(n)]
    ask = Query(original_size=query.original_size, crop_top_left=query.crop_top_left, target_size=query.target_size, guidance=guidance,
                micro_guidance=micro_guidance)
    samples = model.draw(ask, list(range(n)), labels, steps=budget.sampler_steps, progress=progress)
    report = evaluate(samples, refs.images, refs.labels, cache_dir=default_cache_dir() / "features", palette=PALETTE,
                      recipe=FeatureRecipe(steps=budget.feature_steps), sample_labels=labels, held_out=(held.images, held.labels), progress=progress)
    fid, accuracy = report["fidelity"], report["class_accuracy"]
    return {"frechet_distance": fid["frechet_distance"], "kid": fid["kid"], "kid_std": fid["kid_std"], "swd_x1e3": fid["swd_x1e3"]["mean"],
            "sharpness_ratio": report["sharpness"]["laplacian_variance"]["ratio"], "cutoff_rate": report["cutoff_rate"]["samples"],
            "class_accuracy": accuracy["samples"]["rate"], "class_accuracy_low": accuracy["samples"]["low"], "class_accuracy_high": accuracy["samples"]["high"],
            "held_out_accuracy": accuracy["held_out_real"]["rate"], "class_accuracy_ratio": accuracy["ratio"]}, samples


def measure(runs: dict[str, tuple[str, int, Path]], data: Path, out: Path, budget: Budget, progress: bool = True) -> dict:
    """Sample every run for the measurements of every figure; results.json keeps each finished
    run's numbers, so an interrupted measurement resumes with the next run.

    Args:
        runs: run name -> (model name, training seed, run folder).
        data: the demo data folder (holding train/ and eval/).
    """
    from microcond.demodata.build import PALETTE
    from microcond.experiments.recipe import RECIPE_FIELDS
    from microcond.metrics.evaluate import laplacian_variance, load_references
    from microcond.sample.grid import save_grid
    from microcond.sample.run import Query, Run

    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if results.get("budget") != asdict(budget):
        results = {"budget": asdict(budget), "runs": {}}
        for old in (out / "grids").glob("*.png"):  # drawn under another budget (guidance, sampler steps)
            old.unlink()
    refs = load_references(data / "eval", (TRAIN_SIZE, TRAIN_SIZE), progress=progress)
    held = held_out_references(data, progress)
    if "real" not in results:
        results["real"] = {**real_effect(data / "train", PALETTE), "curve": {str(k): v for k, v in real_sharpness_by_size(data / "train").items()},
                           "floor": detector_floor(data / "train", PALETTE), "reference_eval_sharpness": float(laplacian_variance(refs.images).mean()),
                           "held_out_images": len(held.images)}
        _save(results, results_path)

    for run_name, (name, seed, folder) in runs.items():
        if run_name in results["runs"]:
            continue
        started = time.time()
        model = Run(folder)
        entry = {"model": name, "seed": seed, "step": model.step, "images_seen": model.step * model.cfg.batch_size, "signals": list(model.cfg.signals)}
        results.setdefault("recipe", {k: getattr(model.cfg, k) for k in RECIPE_FIELDS})
        guided = budget.sampling(model.cfg.signals)
        # Table 2: SDXL's default query (c_size = target, uncropped) against the held-out references.
        entry["table"], samples = table_scores(model, refs, held, budget.table_samples, budget, progress=progress, **guided)
        # Fig. 4: a model blind to the crop is still asked, to show the base rate it gives every query.
        entry["crop"] = model_effect(model, budget.crop_samples, PALETTE, steps=budget.sampler_steps, n_classes=N_CLASSES, progress=progress, **guided)
        save_grid(samples[:64], out / "grids" / f"samples-{run_name}.png", nrow=8, title=f"{run_name}: c_size 32x32, c_crop 0,0, classes 0-8 cycled")
        # Fig. 3: sharpness against the requested original size (models that see c_size).
        if "original_size" in model.cfg.signals:
            draw = lambda s, guided=guided: model.draw(Query(original_size=(s, s), **guided), list(range(20_000, 20_000 + budget.curve_samples)),  # noqa: E731
                                        [i % N_CLASSES for i in range(budget.curve_samples)], steps=budget.sampler_steps, progress=progress)
            entry["curve"] = {str(s): float(laplacian_variance(draw(s)).mean()) for s in SIZE_CURVE}
        else:
            entry["curve"] = {"any": float(laplacian_variance(samples).mean())}
        entry["minutes"] = (time.time() - started) / 60
        results["runs"][run_name] = entry
        _save(results, results_path)
    return results


def sweep_grids(run: Path, out: Path, seeds: tuple[int, ...] = tuple(range(8)), steps: int = 50, label: int = 5,
                kinds: tuple[str, ...] = ("original_size", "crop"), guidance: float = 1.0, micro_guidance: float | None = None) -> dict[str, Path]:
    """The Fig. 3 (c_size) and Fig. 4 (c_crop of a wide original) sweep grids of one run."""
    from microcond.sample.run import Query, Run

    model = Run(run)
    grids = {}
    for kind, values, query in (
        ("original_size", [8, 16, 32, 64, 128], Query(label=label, guidance=guidance, micro_guidance=micro_guidance)),
        ("crop", [(0, left) for left in CROP_LEFTS], Query(original_size=WIDE, label=label, guidance=guidance, micro_guidance=micro_guidance)),
    ):
        if kind not in kinds:
            continue
        path = out / f"sweep-{kind}-{run.name}.png"
        if not path.exists():
            model.sweep_grid(kind, values, seeds, query, path, steps=steps)
        grids[kind] = path
    return grids


def side_by_side(plain: Path, conditioned: Path, path: Path, n: int = 16, steps: int = 50, budget: Budget = Budget()) -> Path:
    """Paper Fig. 5: the same seeds and classes from a model without micro-conditions and one
    with them asked for "large and uncropped" (c_size 128x128, c_crop (0, 0)); pairs of rows, each
    model at the budget's guidance."""
    import torch

    from microcond.sample.grid import save_grid
    from microcond.sample.run import Query, Run

    if path.exists():
        return path
    seeds, labels = list(range(30_000, 30_000 + n)), [i % N_CLASSES for i in range(n)]
    models = [Run(p) for p in (plain, conditioned)]
    a, b = (m.draw(Query(original_size=(128, 128), crop_top_left=(0, 0), **budget.sampling(m.cfg.signals)), seeds, labels, steps=steps, progress=False) for m in models)
    half = n // 2
    images = torch.cat([a[:half], b[:half], a[half:], b[half:]])
    rows = [plain.name, f"{conditioned.name} (128x128, crop 0,0)"] * 2
    return save_grid(images, path, nrow=half, row_labels=rows, title="Fig. 5 at 32 px: the same seeds without and with micro-conditioning")


def run_paper(out: Path, docs: Path | None, budget: Budget = Budget(), parallel: int = 2) -> Path:
    """Train the models (every seed), measure, and write the results page; reuse whatever is done."""
    import shutil

    from microcond.experiments.paperpage import plot_curve, write_results

    out.mkdir(parents=True, exist_ok=True)
    started = out / "started"  # the first run's start; a rerun that reuses everything reports that run's time
    if not started.exists():
        started.touch()
    data = ensure_demo_data(out / f"data-{MIX}", MIX)
    runs = {f"{name}-s{seed}": (name, seed, out / "runs" / f"{name}-s{seed}") for name in MODELS for seed in range(budget.seeds)}
    commands = {r: train_command(name, data / "train", folder, budget.steps, seed) for r, (name, seed, folder) in runs.items()}
    prepare_caches(data / "train", {0, TRAIN_SIZE})
    train_runs(commands, {r: v[2] for r, v in runs.items()}, {r: budget.steps for r in runs}, parallel)
    # Training time from the first start to the last run's last log line: the same figure when a
    # later call finds the training done (an interrupted measurement, a rerun for the page).
    trained = max((folder / "metrics.jsonl").stat().st_mtime for _, _, folder in runs.values()) - started.stat().st_mtime
    results = measure(runs, data, out, budget)
    results.setdefault("training_minutes", trained / 60)
    if "minutes" not in results:  # training and measuring, from the first start
        results["minutes"] = (time.time() - started.stat().st_mtime) / 60
        _save(results, out / "results.json")
    figures = {"curve": plot_curve(results, SIZE_CURVE, out / "grids" / "sharpness-curve.png")}
    figures["Fig. 5: no-cond against size-crop, same seeds"] = side_by_side(runs["no-cond-s0"][2], runs["size-crop-s0"][2], out / "grids" / "fig5-no-cond-vs-size-crop.png",
                                                                            steps=budget.sampler_steps, budget=budget)
    for name in ("size-crop", "size", "no-cond"):
        for kind, path in sweep_grids(runs[f"{name}-s0"][2], out / "grids", steps=budget.sampler_steps, **budget.sampling(MODELS[name][1]["signals"])).items():
            figures[f"{kind} sweep, {name}-s0"] = path
    for name in MODELS:
        figures[f"samples, {name}-s0"] = out / "grids" / f"samples-{name}-s0.png"

    docs = docs or out / "page"  # not out itself: the page's results.json would replace the measurements'
    (docs / "results").mkdir(parents=True, exist_ok=True)
    for old in (docs / "results").glob("*.png"):  # pictures of models the page no longer has
        old.unlink()
    figures = {k: Path(shutil.copy(p, docs / "results" / p.name)) for k, p in figures.items()}  # beside the page, so that it renders
    ablation = out.parent / "ablation" / "ablation.json"
    ablation = json.loads(ablation.read_text()) if ablation.exists() else None
    command = f"microcond experiment paper --out {out}" + (f" --docs {docs}" if docs != out / "page" else "") + f" --steps {budget.steps}"
    commands = {name: (MODELS[name][0], train_command(name, data / "train", out / "runs" / f"{name}-s0", budget.steps, 0)) for name in MODELS}
    return write_results(results, commands, figures, docs, command, ablation)
