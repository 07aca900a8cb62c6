"""``microcond demo``: demo data -> a tiny model with size and crop conditioning -> what it learned.

Writes into one folder (default ``runs/demo``): ``data/`` (the demo data set), ``run/`` (the
training run: checkpoints, loss curve, periodic sample grids), ``sweeps/`` (paper Fig. 3 and
Fig. 4 grids), ``samples-*.png`` and ``metrics.json``. Running it again resumes training where
it stopped and reuses every finished picture.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from microcond.record import SIGNALS, MicroCond

SHARP = (128, 128)  # "as if from a large original"
DEMO_MIX = "wide"  # microcond.experiment.DATA_MIXES: a quarter square, the rest 2:1, so crops carry information


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    steps: int = 3000
    samples: int = 300
    sampler_steps: int = 50
    n_train: int = 6000
    n_eval: int = 1000
    feature_steps: int = 300
    crop_samples: int = 64  # per crop query and offset, for metrics.json's crop_effect


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Build, train, sample, measure; return the paths to open."""
    from microcond import config as config_mod
    from microcond.data.loader import default_cache_dir
    from microcond.cropeffect import model_effect, real_effect
    from microcond.demodata import PALETTE
    from microcond.evaluate import evaluate, format_report, load_references
    from microcond.experiment import ensure_demo_data, sweep_grids
    from microcond.features import FeatureRecipe
    from microcond.grid import save_grid
    from microcond.inference import Model, Query
    from microcond.train import train

    start = time.time()
    out = Path(cfg.out)
    data = ensure_demo_data(out / "data", DEMO_MIX, cfg.n_train, cfg.n_eval, progress=progress)

    run = out / "run"
    overrides = dict(data=str(data / "train"), num_classes=9, signals=SIGNALS, steps=cfg.steps, sample_every=max(cfg.steps // 3, 1), checkpoint_every=min(500, cfg.steps))
    train_cfg = config_mod.resolve("tiny", overrides=overrides)
    print(f"training the tiny model ({train_cfg.steps} steps of {train_cfg.batch_size} images, size + crop conditioning, {train_cfg.prediction_type}) into {run}")
    train(train_cfg, run, progress=progress)

    model = Model(run)
    labels = [i % 9 for i in range(64)]
    pictures = {}
    for name, query in (("default", Query()), ("sharp", Query(original_size=SHARP))):
        path = out / f"samples-{name}.png"
        if not path.exists():
            images = model.draw(query, list(range(64)), labels, steps=cfg.sampler_steps, progress=progress)
            micro = query.micro(model.cfg.resolution)
            save_grid(images, path, nrow=8, title=f"c_size {micro.original_size[0]}x{micro.original_size[1]}, c_crop 0,0, one class per column")
        pictures[f"samples, {name}"] = path
    for kind, path in sweep_grids(run, out / "sweeps", steps=cfg.sampler_steps).items():
        pictures[f"{kind} sweep"] = path

    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    if metrics.get("step") != model.step or "crop_effect" not in metrics:
        refs = load_references(data / "eval", model.shape[1:], progress=progress)
        metrics = {"step": model.step, "query": {"original_size": list(SHARP), "crop_top_left": [0, 0]}}
        images = model.draw(Query(original_size=SHARP), list(range(cfg.samples)), [i % 9 for i in range(cfg.samples)], steps=cfg.sampler_steps, progress=progress)
        metrics.update(evaluate(images, refs.images, refs.labels, cache_dir=default_cache_dir() / "features", palette=PALETTE, recipe=FeatureRecipe(steps=cfg.feature_steps), progress=progress))
        # Fig. 4 in numbers: the object moves as the requested crop of a wide original moves.
        metrics["crop_effect"] = {"real": real_effect(data / "train", PALETTE), "samples": model_effect(model, cfg.crop_samples, PALETTE, steps=cfg.sampler_steps, progress=progress)}
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_report({k: v for k, v in metrics.items() if k not in ("query", "crop_effect")}))
    real, samples = (metrics["crop_effect"][k]["position"] for k in ("real", "samples"))
    print(f"crop effect: the object centre moves {samples['slope']:+.2f} px per px of c_left [{samples['low']:+.2f}, {samples['high']:+.2f}] "
          f"(real images {real['slope']:+.2f}; 0 = the crop is ignored)")
    pictures["loss curve"] = run / "loss.png"
    print(f"\ndemo done in {(time.time() - start) / 60:.1f} min; open:")
    for name, path in pictures.items():
        print(f"  {name:<22} {path}")
    print(f"  {'metrics':<22} {metrics_path}")
    print(f"  {'data contact sheet':<22} {data / 'preview.png'}")
    print(f"then try: microcond sample {run} --original-size 8 8   (blurry, as if upscaled from 8 px)")
    return {"pictures": pictures, "metrics": metrics}
