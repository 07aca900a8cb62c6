"""The paper's evidence at small scale on the demo data, and the crop-recipe ablation.

``microcond experiment paper`` trains four tiny models, each with two training seeds and equal
budgets, at 32 px and measures
- Table 2: discarding small images vs upscaling them with and without size conditioning
  (Frechet distance and KID in an in-domain classifier's features, pyramid SWD);
- Fig. 3: sharpness of samples against the requested original size;
- Fig. 4: the cut-off rate per query and the object's position against c_crop, beside the real
  data's values for the same query (:mod:`microcond.cropeffect`);
- Fig. 5: the same seeds from the model without and with micro-conditions.
``microcond experiment crop-ablation`` trains the recipe variants that chose the pixel presets'
objective and the data's aspect mix, and measures the crop effect of each.

Models train two at a time, one thread each (two 1-thread processes outrun one 2-thread one on
this kind of machine, reference/cpu-measurements.md). Every stage is reused when done, so a
second run only redoes what is missing.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from microcond.cropeffect import CROP_LEFTS, CROP_QUERIES, TRAIN_SIZE, WIDE, model_effect, rate, real_crops, real_effect
from microcond.record import SIGNALS, MicroCond
from microcond.runner import ensure_demo_data, prepare_caches, train_runs

# Two recipes, one per question; every figure compares models that trained alike, differing only
# in what they see (the crop ablation below shows that no single recipe of the tiny model learned
# both effects in this budget):
# - size: Table 2 and Fig. 3. Epsilon prediction (SDXL's objective) on the web-like mix.
# - crop: Fig. 4 and Fig. 5. v-prediction on the wide mix, where every non-square original is 2:1
#   (microcond.demodata.ASPECT_MIXES), so a 32 px crop cuts up to half of the image and the crop
#   offset says which half. Epsilon prediction ignores the crop; v-prediction learns it and loses
#   the size effect.
RECIPES = {
    "size": ("web", dict(prediction_type="epsilon")),
    "crop": ("wide", dict(prediction_type="v_prediction")),
}
MODELS = {  # name -> (what it sees, train overrides, recipe)
    "drop-small": ("images with a short edge below 32 px discarded, no micro-conditions (the paper's 512-only)", dict(signals=[], min_original_edge=TRAIN_SIZE), "size"),
    "no-cond": ("all images (small ones upscaled), no micro-conditions", dict(signals=[]), "size"),
    "size": ("all images, size conditioning", dict(signals=["original_size"]), "size"),
    "no-cond-v": ("wide mix, v-prediction, no micro-conditions (the Fig. 4 baseline)", dict(signals=[]), "crop"),
    "size-crop-v": ("wide mix, v-prediction, size + crop (+ target) conditioning, as SDXL", dict(signals=list(SIGNALS)), "crop"),
}
SQUARE = MicroCond((TRAIN_SIZE, TRAIN_SIZE), (0, 0), (TRAIN_SIZE, TRAIN_SIZE))  # SDXL's inference default
SIZE_CURVE = (8, 12, 16, 24, 32, 48, 64, 128)
N_CLASSES = 9

# The crop ablation (docs/results.md): (what changes, data mix, train overrides). Everything else
# is the tiny preset with size + crop conditioning.
ABLATIONS = {
    "eps-web": ("epsilon prediction, web mix (the first recipe)", "web", dict(prediction_type="epsilon")),
    "v-web": ("v-prediction, web mix", "web", dict(prediction_type="v_prediction")),
    "eps-extreme": ("epsilon prediction, extreme mix", "extreme", dict(prediction_type="epsilon")),
    "v-extreme": ("v-prediction, extreme mix", "extreme", dict(prediction_type="v_prediction")),
    "v-extreme-lr3e-4": ("v-prediction, extreme mix, lr 3e-4", "extreme", dict(prediction_type="v_prediction", lr=3e-4)),
    "v-extreme-ae1e-4": ("v-prediction, extreme mix, add_embedding lr 1e-4", "extreme", dict(prediction_type="v_prediction", add_embedding_lr=1e-4)),
    "v-extreme-ae1e-5": ("v-prediction, extreme mix, add_embedding lr 1e-5", "extreme", dict(prediction_type="v_prediction", add_embedding_lr=1e-5)),
    "eps-wide": ("epsilon prediction, wide mix", "wide", dict(prediction_type="epsilon")),
    "v-wide": ("v-prediction, wide mix (the paper experiment's recipe)", "wide", dict(prediction_type="v_prediction")),
    "v-wide-sq10": ("v-prediction, wide mix with 10% squares", "wide-sq10", dict(prediction_type="v_prediction")),
    "v-wide-cap10": ("v-prediction, wide mix, loss weight capped at 10x epsilon's", "wide", dict(prediction_type="v_prediction", loss_weight_cap=10)),
    "v-wide-cap50": ("v-prediction, wide mix, loss weight capped at 50x epsilon's", "wide", dict(prediction_type="v_prediction", loss_weight_cap=50)),
}


@dataclass(frozen=True)
class Budget:
    """What one experiment spends: training steps and seeds per model, samples per measurement."""

    steps: int = 2000  # the size recipe's models
    crop_steps: int = 1500  # the crop recipe's models (their crop slope at 1,500 steps equals 2,000's)
    seeds: int = 2
    table_samples: int = 500
    crop_samples: int = 200  # per cut-off query and per offset of the position sweep
    curve_samples: int = 96
    sampler_steps: int = 25  # DDIM; the crop measures at 25 and 50 steps agree within their intervals
    feature_steps: int = 300

    def __post_init__(self) -> None:
        from microcond.config import check_counts

        check_counts(self)


def train_command(name: str, data: Path, run: Path, steps: int, seed: int = 0, extra: dict | None = None) -> list[str]:
    """The ``microcond train`` command of one model (also printed in the results)."""
    overrides = {**RECIPES[MODELS[name][2]][1], **MODELS[name][1], **(extra or {})} if name in MODELS else dict(extra or {})
    cmd = ["microcond", "train", "--preset", "tiny", "--data", str(data), "--out", str(run), "--num-classes", str(N_CLASSES), "--steps", str(steps), "--seed", str(seed), "--sample-every", str(max(steps // 3, 1)), "--checkpoint-every", "500"]
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        cmd += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return cmd


def real_sharpness_by_size(data: Path, bins: tuple[int, ...] = SIZE_CURVE) -> dict[int, float]:
    """Mean Laplacian variance of real 32 px training crops, by the original's short edge."""
    import numpy as np

    from microcond.data.crop import decode_crop
    from microcond.data.metadata import read_metadata
    from microcond.evaluate import laplacian_variance
    from microcond.pixels import stack_hwc

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

    from microcond.evaluate import cut_off

    real = real_crops(data, CROP_QUERIES["square original, crop (0, 0)"])
    noisy = (real + noise * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    return {"noise_std": noise, **rate(cut_off(noisy, palette))}


def _save(results: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)


def measure(runs: dict[str, tuple[str, int, Path]], data: dict[str, Path], out: Path, budget: Budget, progress: bool = True) -> dict:
    """Sample every run for the measurements of its figures; results.json keeps each finished
    run's numbers, so an interrupted measurement resumes with the next run.

    Args:
        runs: run name -> (model name, training seed, run folder).
        data: aspect mix -> demo data folder (holding train/ and eval/).
    """
    import torch

    from microcond.data.source import default_cache_dir
    from microcond.demodata import PALETTE
    from microcond.evaluate import evaluate, laplacian_variance, load_references
    from microcond.features import FeatureRecipe
    from microcond.grid import save_grid
    from microcond.run import Run, Query

    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if results.get("budget") != asdict(budget):
        results = {"budget": asdict(budget), "runs": {}}
    size_data, crop_data = data[RECIPES["size"][0]], data[RECIPES["crop"][0]]
    if "real" not in results:
        refs_eval = load_references(size_data / "eval", (TRAIN_SIZE, TRAIN_SIZE), progress=progress)
        results["real"] = {**real_effect(crop_data / "train", PALETTE), "curve": {str(k): v for k, v in real_sharpness_by_size(size_data / "train").items()},
                           "floor": detector_floor(crop_data / "train", PALETTE), "reference_eval_sharpness": float(laplacian_variance(refs_eval.images).mean())}
        _save(results, results_path)
    refs = None

    for run_name, (name, seed, folder) in runs.items():
        if run_name in results["runs"]:
            continue
        started = time.time()
        model = Run(folder)

        def draw(micro: MicroCond, n: int, seed0: int) -> torch.Tensor:
            query = Query(original_size=micro.original_size, crop_top_left=micro.crop_top_left, target_size=micro.target_size)
            return model.draw(query, list(range(seed0, seed0 + n)), [i % N_CLASSES for i in range(n)], steps=budget.sampler_steps, progress=progress)

        recipe = MODELS[name][2]
        entry = {"model": name, "seed": seed, "step": model.step, "recipe": recipe}
        if recipe == "size":
            # Table 2: SDXL's default query (c_size = target, uncropped) against the held-out references.
            refs = refs or load_references(size_data / "eval", (TRAIN_SIZE, TRAIN_SIZE), progress=progress)
            samples = draw(SQUARE, budget.table_samples, 0)
            report = evaluate(samples, refs.images, refs.labels, cache_dir=default_cache_dir() / "features", palette=PALETTE,
                              recipe=FeatureRecipe(steps=budget.feature_steps), progress=progress)
            fid = report["fidelity"]
            entry["table"] = {"frechet_distance": fid["frechet_distance"], "kid": fid["kid"], "kid_std": fid["kid_std"], "swd_x1e3": fid["swd_x1e3"]["mean"],
                              "sharpness_ratio": report["sharpness"]["laplacian_variance"]["ratio"], "cutoff_rate": report["cutoff_rate"]["samples"]}
        else:
            # Fig. 4: the model blind to the crop is still asked, to show the base rate it gives every query.
            entry["crop"] = model_effect(model, budget.crop_samples, PALETTE, steps=budget.sampler_steps, n_classes=N_CLASSES, progress=progress)
            samples = draw(SQUARE, 64, 0)
        save_grid(samples[:64], out / "grids" / f"samples-{run_name}.png", nrow=8, title=f"{run_name}: c_size 32x32, c_crop 0,0")
        # Fig. 3: sharpness against the requested original size (models that see c_size).
        if "original_size" in model.cfg.signals:
            entry["curve"] = {str(s): float(laplacian_variance(draw(MicroCond((s, s), (0, 0), SQUARE.target_size), budget.curve_samples, 20_000)).mean()) for s in SIZE_CURVE}
        elif recipe == "size":
            entry["curve"] = {"any": float(laplacian_variance(samples).mean())}
        entry["minutes"] = (time.time() - started) / 60
        results["runs"][run_name] = entry
        _save(results, results_path)
    return results


def sweep_grids(run: Path, out: Path, seeds: tuple[int, ...] = tuple(range(8)), steps: int = 50, label: int = 5,
                kinds: tuple[str, ...] = ("original_size", "crop")) -> dict[str, Path]:
    """The Fig. 3 (c_size) and Fig. 4 (c_crop of a wide original) sweep grids of one run."""
    from microcond.run import Run, Query

    model = Run(run)
    grids = {}
    for kind, values, query in (
        ("original_size", [8, 16, 32, 64, 128], Query(label=label)),
        ("crop", [(0, left) for left in CROP_LEFTS], Query(original_size=WIDE, label=label)),
    ):
        if kind not in kinds:
            continue
        path = out / f"sweep-{kind}-{run.name}.png"
        if not path.exists():
            model.sweep_grid(kind, values, seeds, query, path, steps=steps)
        grids[kind] = path
    return grids


def side_by_side(plain: Path, conditioned: Path, path: Path, n: int = 16, steps: int = 50) -> Path:
    """Paper Fig. 5: the same seeds and classes from a model without micro-conditions and one
    with them asked for "large and uncropped" (c_size 128x128, c_crop (0, 0)); pairs of rows."""
    import torch

    from microcond.grid import save_grid
    from microcond.run import Run, Query

    if path.exists():
        return path
    query = Query(original_size=(128, 128), crop_top_left=(0, 0))
    seeds, labels = list(range(30_000, 30_000 + n)), [i % N_CLASSES for i in range(n)]
    a, b = (Run(p).draw(query, seeds, labels, steps=steps, progress=False) for p in (plain, conditioned))
    half = n // 2
    images = torch.cat([a[:half], b[:half], a[half:], b[half:]])
    rows = [plain.name, f"{conditioned.name} (128x128, crop 0,0)"] * 2
    return save_grid(images, path, nrow=half, row_labels=rows, title="Fig. 5 at 32 px: the same seeds without and with micro-conditioning")


def run_paper(out: Path, docs: Path | None, budget: Budget = Budget(), parallel: int = 2) -> Path:
    """Train the models (every seed), measure, and write the results page; reuse whatever is done."""
    from microcond.paperpage import plot_curve, write_results

    out.mkdir(parents=True, exist_ok=True)
    started = out / "started"  # the first run's start; a rerun that reuses everything reports that run's time
    if not started.exists():
        started.touch()
    data = {mix: ensure_demo_data(out / f"data-{mix}", mix) for mix, _ in RECIPES.values()}
    mix_of = {name: RECIPES[recipe][0] for name, (_, _, recipe) in MODELS.items()}
    steps_of = {name: budget.steps if recipe == "size" else budget.crop_steps for name, (_, _, recipe) in MODELS.items()}
    runs = {f"{name}-s{seed}": (name, seed, out / "runs" / f"{name}-s{seed}") for name in MODELS for seed in range(budget.seeds)}
    commands = {r: train_command(name, data[mix_of[name]] / "train", folder, steps_of[name], seed) for r, (name, seed, folder) in runs.items()}
    for mix in data:
        prepare_caches(data[mix] / "train", {0, TRAIN_SIZE} if mix == RECIPES["size"][0] else {0})
    clock = time.time()
    train_runs(commands, {r: v[2] for r, v in runs.items()}, {r: steps_of[v[0]] for r, v in runs.items()}, parallel)
    trained = time.time() - clock
    results = measure(runs, data, out, budget)
    results.setdefault("training_minutes", trained / 60)
    if "minutes" not in results:  # training and measuring, from the first start
        results["minutes"] = (time.time() - started.stat().st_mtime) / 60
        _save(results, out / "results.json")
    figures = {"curve": plot_curve(results, SIZE_CURVE, out / "grids" / "sharpness-curve.png")}
    figures["Fig. 5: no-cond-v against size-crop-v, same seeds"] = side_by_side(runs["no-cond-v-s0"][2], runs["size-crop-v-s0"][2], out / "grids" / "fig5-no-cond-v-vs-size-crop-v.png", steps=budget.sampler_steps)
    for name in ("size", "size-crop-v", "no-cond-v"):
        for kind, path in sweep_grids(runs[f"{name}-s0"][2], out / "grids", steps=budget.sampler_steps).items():
            figures[f"{kind} sweep, {name}-s0"] = path
    for name in MODELS:
        figures[f"samples, {name}-s0"] = out / "grids" / f"samples-{name}-s0.png"
    import shutil

    docs = docs or out / "page"  # not out itself: the page's results.json would replace the measurements'
    (docs / "results").mkdir(parents=True, exist_ok=True)
    for old in (docs / "results").glob("*.png"):  # pictures of models the page no longer has
        old.unlink()
    figures = {k: Path(shutil.copy(p, docs / "results" / p.name)) for k, p in figures.items()}  # beside the page, so that it renders
    ablation = out.parent / "ablation" / "ablation.json"
    ablation = json.loads(ablation.read_text()) if ablation.exists() else None
    command = f"microcond experiment paper --out {out}" + (f" --docs {docs}" if docs != out / "page" else "") + f" --steps {budget.steps} --crop-steps {budget.crop_steps}"
    commands = {name: (MODELS[name][0], train_command(name, data[mix_of[name]] / "train", out / "runs" / f"{name}-s0", steps_of[name], 0)) for name in MODELS}
    return write_results(results, commands, figures, docs, command, ablation)


def size_response(model, n: int, steps: int, sizes: tuple[int, int] = (8, 128)) -> dict[str, float]:
    """Mean Laplacian variance of samples asked for a small and a large square original (Fig. 3's ends)."""
    from microcond.evaluate import laplacian_variance
    from microcond.run import Query

    seeds, labels = list(range(20_000, 20_000 + n)), [i % N_CLASSES for i in range(n)]
    return {str(s): float(laplacian_variance(model.draw(Query(original_size=(s, s)), seeds, labels, steps=steps, progress=False)).mean()) for s in sizes}


def live_units(run: Path, batches: int = 16) -> int:
    """Live hidden units of a run's conditioning MLP (EMA weights) over training batches
    (:class:`microcond.train.ConditioningHealth`'s measure, after training)."""
    import torch

    from microcond.data.loader import open_training_data
    from microcond.run import load_run
    from microcond.model import ConditioningHealth

    model, cfg, _, _ = load_run(run)
    health = ConditioningHealth(model.unet)
    data = iter(open_training_data(cfg, run, rank=0, world_size=1, batch_size=64))
    with torch.no_grad():
        for _ in range(batches):
            batch = next(data)
            x = torch.zeros(len(batch["ids"]), 3, cfg.resolution, cfg.resolution)
            model(x, torch.full((len(x),), 500), model.embedder.select(batch["ids"]), None, batch["labels"])
    return health.report()["cond_units_live"]


def run_ablation(out: Path, budget: Budget = Budget(steps=2000, crop_samples=128), parallel: int = 2, settings: list[str] | None = None) -> dict:
    """Train ABLATIONS settings (all, or the named ones; seed 0) and measure the crop effect of
    each into ``out/ablation.json``, which keeps earlier settings' rows."""
    from microcond.demodata import PALETTE
    from microcond.run import Run

    unknown = sorted(set(settings or []) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablation setting(s) {unknown}; choose from {sorted(ABLATIONS)} (--settings)")
    chosen = {name: ABLATIONS[name] for name in (settings or ABLATIONS)}
    out.mkdir(parents=True, exist_ok=True)
    mixes = sorted({mix for _, mix, _ in chosen.values()})
    data = {mix: ensure_demo_data(out / f"data-{mix}", mix) / "train" for mix in mixes}
    for folder in data.values():
        prepare_caches(folder, {0})
    runs = {name: out / name for name in chosen}
    commands = {name: train_command("size-crop-v", data[mix], runs[name], budget.steps, 0, extra) for name, (_, mix, extra) in chosen.items()}
    train_runs(commands, runs, {name: budget.steps for name in chosen}, parallel)
    path = out / "ablation.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if results.get("budget") != asdict(budget):
        results = {"budget": asdict(budget), "real": {}, "rows": {}}
    for mix in mixes:
        results["real"].setdefault(mix, real_effect(data[mix], PALETTE))
    for name, (setting, mix, extra) in chosen.items():
        if name not in results["rows"]:
            model = Run(runs[name])
            results["rows"][name] = {"setting": setting, "aspect_mix": mix, "overrides": extra, "step": model.step, "cond_units_live": live_units(runs[name]),
                                     **model_effect(model, budget.crop_samples, PALETTE, steps=budget.sampler_steps, n_classes=N_CLASSES),
                                     "sharpness": size_response(model, budget.crop_samples, budget.sampler_steps)}
            _save(results, path)
    return results
