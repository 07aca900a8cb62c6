"""``microcond demo``: demo data -> one tiny model with SDXL's three signals -> both effects.

One model sees original size, crop and target size, as SDXL does, trained with the pixel
presets' recipe (docs/results.md) on the wide demo data: a quarter of the originals square, the
rest 2:1, and 40% smaller than the 32 px training size. It learns both effects of the paper:

- Fig. 3: ask for a small original and get blur, a large one and get detail;
- Fig. 4: ask for an uncropped image and get the whole object; ask for the left end of a wide
  original and get the object cut at the right border.

The model trains as the CPU launcher lays it out (one data-parallel process per free core).
Writes into one folder (default ``runs/demo``): ``data-wide/`` (the demo data), ``run/``
(checkpoints, loss curve, periodic sample grids), ``sweeps/`` (Fig. 3 and Fig. 4 grids),
``samples-*.png`` and ``metrics.json``. Running it again resumes training where it stopped and
reuses every finished picture.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from microcond.base.files import atomic_write_text
from microcond.experiments.paper import GUIDANCE, MICRO_GUIDANCE

SHARP = (128, 128)  # "as if from a large original"
MODEL = "size-crop"  # the microcond.experiments.paper.MODELS entry the demo trains


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    steps: int = 2000  # 64,000 training images at batch 32
    samples: int = 300
    sampler_steps: int = 25  # DDIM; the crop measures at 25 and 50 steps agree (docs/results.md)
    guidance: float = GUIDANCE
    micro_guidance: float = MICRO_GUIDANCE  # 0 = none
    n_train: int = 6000
    n_eval: int = 1000
    feature_steps: int = 300
    crop_samples: int = 64  # per crop query and offset, for metrics.json's crop_effect
    emoji_per_class: int = 0  # training emoji per class, 0 = all

    def __post_init__(self) -> None:
        from microcond.base.settings import check_counts, check_scales

        check_scales(self, ("guidance", "micro_guidance"))
        check_counts(self, zero_ok=("emoji_per_class",))

    @property
    def sampling(self) -> dict:
        """The guidance of every sample the demo draws, as :class:`microcond.sample.run.Query` fields."""
        return {"guidance": self.guidance, "micro_guidance": self.micro_guidance or None}


def _crop_measures(run: Path, train_data: Path, sweeps: Path, cfg: DemoConfig, measure: bool) -> tuple[Path, dict | None]:
    """The crop sweep grid and, when ``measure``, the crop effect beside the real data's (in a
    process of its own, one thread, while the caller measures the rest)."""
    import torch

    from microcond.demodata.build import PALETTE
    from microcond.experiments.paper import N_CLASSES, sweep_grids
    from microcond.metrics.cropeffect import model_effect, real_effect
    from microcond.sample.run import Run

    torch.set_num_threads(1)
    grid = sweep_grids(run, sweeps, steps=cfg.sampler_steps, kinds=("crop",), **cfg.sampling)["crop"]
    if not measure:
        return grid, None
    effect = {"real": real_effect(train_data, PALETTE),
              "samples": model_effect(Run(run), cfg.crop_samples, PALETTE, steps=cfg.sampler_steps, n_classes=N_CLASSES, **cfg.sampling, progress=False)}
    return grid, effect


def check_recipe(run: Path, data: Path) -> None:
    """Refuse a demo folder whose model was trained with another recipe than the presets' now: its
    samples would be drawn at guidance chosen for the new recipe, and more steps could not resume."""
    from microcond.experiments.paper import train_overrides
    from microcond.train import config as config_mod

    if not (run / "config.json").exists():
        return
    old = config_mod.from_dict(json.loads((run / "config.json").read_text()))
    new = config_mod.resolve("tiny", overrides=train_overrides(MODEL, data, old.steps))
    changed = config_mod.differing_fields(old, new)
    if changed:
        raise ValueError(f"{run} was trained with another recipe than the pixel presets' now ({', '.join(changed)} differ): "
                         f"give the demo a new --out, or move {run.parent} aside")


def _training_speed(run: Path) -> tuple[int, float]:
    """(images seen, median images per second over the logged windows) from metrics.jsonl."""
    import statistics

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["images_per_s"] for r in rows if r.get("images_per_s")]
    return (rows[-1]["images_seen"] if rows else 0), (statistics.median(speeds) if speeds else float("nan"))


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Build, train, sample, measure; return the paths to open."""
    import torch

    from microcond.data.source import default_cache_dir
    from microcond.demodata.build import PALETTE
    from microcond.experiments.launch import ensure_demo_data, prepare_caches, train_runs
    from microcond.experiments.paper import MIX, MODELS, N_CLASSES, held_out_references, sweep_grids, train_command
    from microcond.metrics.cropeffect import TRAIN_SIZE
    from microcond.metrics.evaluate import evaluate, format_report, load_references
    from microcond.metrics.features import FeatureRecipe
    from microcond.sample.grid import save_grid
    from microcond.sample.run import Query, Run

    start = time.time()
    out = Path(cfg.out)
    data = ensure_demo_data(out / f"data-{MIX}", MIX, cfg.n_train, cfg.n_eval, progress=progress, emoji_per_class=cfg.emoji_per_class)
    run = out / "run"
    check_recipe(run, data / "train")
    prepare_caches(data / "train", {0})
    print(f"training one tiny model, {cfg.steps} steps of 32 images ({cfg.steps * 32:,} images): {MODELS[MODEL][0]}")
    clock = time.time()
    train_runs({"run": train_command(MODEL, data / "train", run, cfg.steps)}, {"run": run}, {"run": cfg.steps}, parallel=1, progress=progress, one_thread=False)
    trained_s = time.time() - clock
    images_seen, images_per_s = _training_speed(run)

    # What the model learned, measured on both cores: the crop effect in a second process, the rest here.
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    model = Run(run)
    fresh = metrics.get("step") != model.step or metrics.get("sampling") != cfg.sampling or metrics.get("sampler_steps") != cfg.sampler_steps
    if fresh:  # pictures of another step or guidance are drawn again
        for old in [*out.glob("samples-*.png"), *(out / "sweeps").glob("sweep-*.png")]:
            old.unlink()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        crop_part = pool.submit(_crop_measures, run, data / "train", out / "sweeps", cfg, fresh)
        torch.set_num_threads(1)
        labels = [i % N_CLASSES for i in range(64)]
        pictures = {}
        for name, query in (("default", Query(**cfg.sampling)), ("sharp", Query(original_size=SHARP, **cfg.sampling))):
            path = out / f"samples-{name}.png"
            if not path.exists():
                images = model.draw(query, list(range(64)), labels, steps=cfg.sampler_steps, progress=progress)
                micro = query.micro(model.cfg.resolution)
                save_grid(images, path, nrow=8, title=f"c_size {micro.original_size[0]}x{micro.original_size[1]}, c_crop 0,0, classes 0-8 cycled")
            pictures[f"samples, {name}"] = path
        pictures["original_size sweep"] = sweep_grids(run, out / "sweeps", steps=cfg.sampler_steps, kinds=("original_size",), **cfg.sampling)["original_size"]
        if fresh:
            refs = load_references(data / "eval", model.size, progress=progress)
            held = held_out_references(data, progress)
            n_labels = [i % N_CLASSES for i in range(cfg.samples)]
            metrics = {"step": model.step, "images_seen": images_seen, "sampling": cfg.sampling, "sampler_steps": cfg.sampler_steps, "query": {"original_size": list(SHARP), "crop_top_left": [0, 0]}}
            images = model.draw(Query(original_size=SHARP, **cfg.sampling), list(range(cfg.samples)), n_labels, steps=cfg.sampler_steps, progress=progress)
            metrics.update(evaluate(images, refs.images, refs.labels, cache_dir=default_cache_dir() / "features", palette=PALETTE,
                                    recipe=FeatureRecipe(steps=cfg.feature_steps), sample_labels=n_labels, held_out=(held.images, held.labels), progress=progress))
        pictures["crop sweep"], crop_effect = crop_part.result()
    if fresh:
        metrics["crop_effect"] = crop_effect  # Fig. 4 in numbers: cut-off per query, and the object moving with the requested crop
        atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    print(format_report({k: v for k, v in metrics.items() if k not in ("query", "crop_effect", "step", "sampling")}))
    real, samples = (metrics["crop_effect"][k] for k in ("real", "samples"))
    for query, rate in samples["cutoff"].items():
        print(f"cut off, {query}: {100 * rate['rate']:.0f}% of samples (real images {100 * real['cutoff'][query]['rate']:.0f}%)")
    print(f"the object centre moves {samples['position']['slope']:+.2f} px per px of c_left [{samples['position']['low']:+.2f}, {samples['position']['high']:+.2f}] "
          f"(real images {real['position']['slope']:+.2f}; 0 = the crop is ignored)")
    pictures["loss curve"] = run / "loss.png"
    print(f"\ndemo done in {(time.time() - start) / 60:.1f} min: {images_seen:,} images trained, {images_per_s:.0f} images/s "
          f"(median over the logged windows; this call trained for {trained_s / 60:.1f} min); open:")
    for name, path in pictures.items():
        print(f"  {name:<24} {path}")
    print(f"  {'metrics':<24} {metrics_path}")
    print(f"  {'data contact sheet':<24} {data / 'preview.png'}")
    print(f"then try: microcond sample {run} --original-size 8 8   (blurry, as if upscaled from 8 px)")
    print(f"      or: microcond sample {run} --original-size {TRAIN_SIZE} {2 * TRAIN_SIZE} --crop 0 0   (the left end of a wide original: cut at the right)")
    return {"pictures": pictures, "metrics": metrics}
