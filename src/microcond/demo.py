"""``microcond demo``: demo data -> two tiny models, one per micro-condition -> what each learned.

The paper experiment found no single recipe of the tiny model that learns both effects in a few
minutes (docs/results.md), so the demo trains its two recipes side by side, one process and one
thread each (both cores busy):

- ``run-size``: size conditioning, epsilon prediction, the web-like demo data (paper Fig. 3:
  ask for a small original and get blur, a large one and get detail);
- ``run-crop``: size + crop conditioning, v-prediction, the wide mix (paper Fig. 4: the object
  moves as the requested crop moves).

Writes into one folder (default ``runs/demo``): ``data-web/`` and ``data-wide/`` (the demo data),
the two runs (checkpoints, loss curves, periodic sample grids), ``sweeps/`` (Fig. 3 and Fig. 4
grids), ``samples-*.png`` and ``metrics.json``. Running it again resumes training where it
stopped and reuses every finished picture.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SHARP = (128, 128)  # "as if from a large original"
MODELS = {"size": "size", "crop": "size-crop-v"}  # demo run -> microcond.experiment.MODELS entry


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    steps: int = 1500  # per model
    samples: int = 300
    sampler_steps: int = 25  # DDIM; the crop measures at 25 and 50 steps agree (docs/results.md)
    n_train: int = 6000
    n_eval: int = 1000
    feature_steps: int = 300
    crop_samples: int = 64  # per crop query and offset, for metrics.json's crop_effect
    emoji_per_class: int = 0  # training emoji per class, 0 = all (with 6 the crop model learned no crop in 1,500 steps)

    def __post_init__(self) -> None:
        from microcond.config import check_counts

        check_counts(self, zero_ok=("emoji_per_class",))


def _crop_measures(run: Path, train_data: Path, sweeps: Path, cfg: DemoConfig, measure: bool) -> tuple[Path, dict | None]:
    """The crop model's sweep grid and, when ``measure``, its crop effect beside the real data's
    (in a process of its own, one thread)."""
    import torch

    from microcond.cropeffect import model_effect, real_effect
    from microcond.demodata import PALETTE
    from microcond.experiment import N_CLASSES, sweep_grids
    from microcond.run import Run

    torch.set_num_threads(1)
    grid = sweep_grids(run, sweeps, steps=cfg.sampler_steps, kinds=("crop",))["crop"]
    if not measure:
        return grid, None
    effect = {"real": real_effect(train_data, PALETTE),
              "samples": model_effect(Run(run), cfg.crop_samples, PALETTE, steps=cfg.sampler_steps, n_classes=N_CLASSES, progress=False)}
    return grid, effect


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Build, train, sample, measure; return the paths to open."""
    import torch

    from microcond.data.source import default_cache_dir
    from microcond.demodata import PALETTE
    from microcond.evaluate import evaluate, format_report, load_references
    from microcond.experiment import MODELS as RECIPE_MODELS
    from microcond.experiment import N_CLASSES, RECIPES, sweep_grids, train_command
    from microcond.features import FeatureRecipe
    from microcond.grid import save_grid
    from microcond.run import Run, Query
    from microcond.runner import ensure_demo_data, prepare_caches, train_runs

    start = time.time()
    out = Path(cfg.out)
    mix = {run: RECIPES[RECIPE_MODELS[name][2]][0] for run, name in MODELS.items()}
    data = {m: ensure_demo_data(out / f"data-{m}", m, cfg.n_train, cfg.n_eval, progress=progress, emoji_per_class=cfg.emoji_per_class) for m in sorted(set(mix.values()))}
    runs = {run: out / f"run-{run}" for run in MODELS}
    commands = {run: train_command(name, data[mix[run]] / "train", runs[run], cfg.steps) for run, name in MODELS.items()}
    for m in data:
        prepare_caches(data[m] / "train", {0})
    print(f"training two tiny models side by side, {cfg.steps} steps of 32 images each, one thread each:")
    for run, name in MODELS.items():
        print(f"  {runs[run]}: {RECIPE_MODELS[name][0]}")
    train_runs(commands, runs, {run: cfg.steps for run in MODELS}, progress=progress)

    # What each model learned, measured side by side: the crop model in a second process (one
    # core each), the size model here.
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    size_model = Run(runs["size"])
    steps = {"size": size_model.step, "crop": Run(runs["crop"]).step}
    fresh = metrics.get("steps") != steps
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        crop_part = pool.submit(_crop_measures, runs["crop"], data[mix["crop"]] / "train", out / "sweeps", cfg, fresh)
        torch.set_num_threads(1)
        labels = [i % N_CLASSES for i in range(64)]
        pictures = {}
        for name, query in (("default", Query()), ("sharp", Query(original_size=SHARP))):
            path = out / f"samples-{name}.png"
            if not path.exists():
                images = size_model.draw(query, list(range(64)), labels, steps=cfg.sampler_steps, progress=progress)
                micro = query.micro(size_model.cfg.resolution)
                save_grid(images, path, nrow=8, title=f"run-size: c_size {micro.original_size[0]}x{micro.original_size[1]}, one class per column")
            pictures[f"samples, {name}"] = path
        pictures["original_size sweep"] = sweep_grids(runs["size"], out / "sweeps", steps=cfg.sampler_steps, kinds=("original_size",))["original_size"]
        if fresh:
            refs = load_references(data[mix["size"]] / "eval", size_model.size, progress=progress)
            metrics = {"steps": steps, "query": {"original_size": list(SHARP), "crop_top_left": [0, 0]}}
            images = size_model.draw(Query(original_size=SHARP), list(range(cfg.samples)), [i % N_CLASSES for i in range(cfg.samples)], steps=cfg.sampler_steps, progress=progress)
            metrics.update(evaluate(images, refs.images, refs.labels, cache_dir=default_cache_dir() / "features", palette=PALETTE, recipe=FeatureRecipe(steps=cfg.feature_steps), progress=progress))
        pictures["crop sweep"], crop_effect = crop_part.result()
    if fresh:
        metrics["crop_effect"] = crop_effect  # Fig. 4 in numbers: the object moves as the requested crop of a wide original moves
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_report({k: v for k, v in metrics.items() if k not in ("query", "crop_effect", "steps")}))
    real, samples = (metrics["crop_effect"][k]["position"] for k in ("real", "samples"))
    print(f"crop effect (run-crop): the object centre moves {samples['slope']:+.2f} px per px of c_left [{samples['low']:+.2f}, {samples['high']:+.2f}] "
          f"(real images {real['slope']:+.2f}; 0 = the crop is ignored)")
    for run in MODELS:
        pictures[f"loss curve, run-{run}"] = runs[run] / "loss.png"
    print(f"\ndemo done in {(time.time() - start) / 60:.1f} min; open:")
    for name, path in pictures.items():
        print(f"  {name:<24} {path}")
    print(f"  {'metrics':<24} {metrics_path}")
    print(f"  {'data contact sheet':<24} {data[mix['size']] / 'preview.png'}")
    print(f"then try: microcond sample {runs['size']} --original-size 8 8   (blurry, as if upscaled from 8 px)")
    return {"pictures": pictures, "metrics": metrics}
