"""Upscaled files that lie about their size: conditioning on the file size, the effective size, or the truth.

``microcond experiment upscaled`` takes the web-like demo data and replaces 30% of the images
larger than the training size by fakes: each is area-downscaled by a factor drawn log-uniform in
[2, 4] and upscaled back to its file size with bicubic interpolation, so its file says "large"
while its detail is that of the small image (what web data does with upscaled uploads). Three
tiny size-conditioned models train on the same files with equal budgets, told three different
original sizes (config ``original_size_source``):

- ``file``: the file's size (SDXL);
- ``effective``: the size measured by ``microcond scan --effective`` (:mod:`microcond.data.effective`);
- ``true``: the size the data generator knows (the ceiling), written into the index's effective
  columns.

Each model is measured as the paper experiment measures Fig. 3 and Table 2: the sharpness of its
samples against the requested c_size (Spearman, and the c_size 128 sharpness as a share of real
images whose original is about 128 px) and the Frechet distance of its default samples to the
held-out real images. The question: does the file-size model learn that "large" can mean
blurry, and how much of the gap to the true-size model does the effective size close?
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from microcond.base.files import atomic_write_text
from microcond.experiments.launch import ensure_demo_data, prepare_caches, train_runs
from microcond.metrics.cropeffect import TRAIN_SIZE

FAKE_SHARE = 0.3  # of the images whose short edge is above the training size
FACTORS = (2.0, 4.0)  # downscale factor range of a fake, log-uniform
SOURCES = ("file", "effective", "true")


def fake_upscales(clean: Path, out: Path, seed: int = 0) -> dict[str, list[int]]:
    """Write ``out`` (files, metadata.jsonl) from the demo split ``clean`` with fakes; returns the
    true (h, w) of every faked file. Unchanged files are hard links (copies where links fail)."""
    from PIL import Image

    from microcond.data.metadata import read_metadata

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    records = list(read_metadata(clean))
    large = [file for file, record in records if min(record["original_size"]) > TRAIN_SIZE]
    faked = set(rng.choice(large, size=round(FAKE_SHARE * len(large)), replace=False).tolist())
    truth = {}
    for file, record in records:
        source, target = clean / file, out / file
        if file not in faked:
            _link(source, target)
            continue
        factor = math.exp(rng.uniform(*np.log(FACTORS)))
        with Image.open(source) as image:
            image = image.convert("RGB")
            w, h = image.size
            small = (max(1, round(w / factor)), max(1, round(h / factor)))
            fake = image.resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.BICUBIC)
            options = {"quality": int(record.get("jpeg_quality") or 90)} if target.suffix.lower() in (".jpg", ".jpeg") else {}
            fake.save(target, **options)
        truth[file] = [small[1], small[0]]
    lines = [json.dumps({**record, "true_size": truth.get(file, record["original_size"])}) for file, record in records]
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return truth


def _link(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy where the file system has no hard links)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def index_variants(data: Path, root: Path, truth: dict[str, list[int]], progress: bool = True) -> dict[str, Path]:
    """One folder per size source, each the same files (linked) with its own ``index.parquet``:
    without effective sizes, with measured ones (measured again when the estimator's version
    changed), and with the true sizes in their place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from microcond.data.scan import scan
    from microcond.data.effective import ESTIMATOR_VERSION
    from microcond.data.index import index_schema, index_settings

    folders = {}
    for source in SOURCES:
        folder = root / f"upscaled-{source}"
        index = folder / "index.parquet"
        folders[source] = folder
        measured = index_settings(index).get("effective") if index.exists() else None
        if index.exists() and (source == "file" or measured == {"effective": ESTIMATOR_VERSION, "true": "ground truth"}[source]):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for item in data.iterdir():
            if not (folder / item.name).exists():
                _link(item, folder / item.name)
        print(scan([folder], index, effective=source == "effective", progress=progress).line())
        if source == "true":  # the generator's knowledge in the columns the loader reads for "effective"
            table = pq.read_table(index)
            names = [Path(p).name for p in table.column("path").to_pylist()]  # the split is one flat folder
            sizes = [truth.get(n, (h, w)) for n, h, w in zip(names, table.column("height").to_pylist(), table.column("width").to_pylist())]
            heights, widths = [int(h) for h, _ in sizes], [int(w) for _, w in sizes]
            schema = index_schema(int(index_settings(index)["max_pixels"]), effective="ground truth")
            none = [None] * table.num_rows
            columns = {**{name: table.column(name) for name in table.column_names}, "effective_height": heights, "effective_width": widths,
                       "effective_confidence": [1.0] * table.num_rows, "jpeg_quality": none, "effective_reason": none}
            pq.write_table(pa.table({f.name: columns[f.name] for f in schema}, schema=schema), index)
    return folders


def measure_effective(folder: Path, truth: dict[str, list[int]]) -> dict:
    """How well the scan's effective sizes find the fakes: error of the estimated factor on fakes, false upscales on the rest."""
    from microcond.data.index import read_index

    rows = read_index(folder / "index.parquet").to_pydict()
    fake_err, native_flagged, natives, unmeasured = [], 0, 0, 0
    for path, h, eh in zip(rows["path"], rows["height"], rows["effective_height"]):
        name = Path(path).name
        if eh is None:
            unmeasured += 1
            continue
        if name in truth:
            fake_err.append(abs(math.log(h / eh) - math.log(h / truth[name][0])))
        else:
            natives += 1
            native_flagged += h / eh >= 1.25
    return {"fakes": len(fake_err), "fakes_within_10pct": float(np.mean(np.array(fake_err) <= 0.095)) if fake_err else None,
            "natives_flagged_upscaled": native_flagged / max(natives, 1), "unmeasured": unmeasured}


def run_upscaled(out: Path, steps: int = 2000, n_curve: int = 96, n_table: int = 500, sampler_steps: int = 25, feature_steps: int = 300,
                 seeds: int = 1, parallel: int = 2, progress: bool = True) -> dict:
    """Build the data, train the three models (``seeds`` training seeds each), measure them;
    writes ``out/upscaled.json`` and ``out/upscaled.md``. Each run's measures are kept in
    ``out/measures.json``, so a rerun with more seeds measures only the new runs."""
    from microcond.experiments.paper import train_command

    started = time.time()
    clean = ensure_demo_data(out / "data-web", "web", progress=progress)
    truth_path = out / "truth.json"
    if not truth_path.exists():
        shutil.rmtree(out / "upscaled", ignore_errors=True)
        atomic_write_text(truth_path, json.dumps(fake_upscales(clean / "train", out / "upscaled")))
    truth = json.loads(truth_path.read_text())
    folders = index_variants(out / "upscaled", out, truth, progress)
    for folder in folders.values():
        prepare_caches(folder, {0})
    names = {(source, seed): f"size-{source}" + (f"-s{seed}" if seed else "") for source in SOURCES for seed in range(seeds)}
    runs = {name: out / "runs" / name for name in names.values()}
    commands = {names[source, seed]: train_command("size", folders[source], runs[names[source, seed]], steps, seed=seed,
                                                   extra={"original_size_source": "file" if source == "file" else "effective"})
                for source, seed in names}
    train_runs(commands, runs, {name: steps for name in runs}, parallel=parallel, progress=progress)

    from microcond.experiments.paper import real_sharpness_by_size
    from microcond.metrics.stats import spearman

    real = real_sharpness_by_size(clean / "train")
    measures = _measure_runs(out / "measures.json", runs, clean, n_curve, n_table, sampler_steps, feature_steps, progress)
    results = {"steps": steps, "seeds": seeds, "fakes": len(truth), "effective_estimates": measure_effective(folders["effective"], truth),
               "real_curve": {str(k): v for k, v in real.items()}, "models": {}, "commands": {n: " ".join(c) for n, c in commands.items()}}
    for source in SOURCES:
        entries = [measures[names[source, seed]] for seed in range(seeds)]
        curve = {k: float(np.mean([e["curve"][k] for e in entries])) for k in entries[0]["curve"]}
        results["models"][source] = {"curve": curve, "spearman": spearman([int(k) for k in curve], list(curve.values())),
                                     "sharpness_128_share_of_real": curve["128"] / real[128],
                                     "frechet_distance": float(np.mean([e["frechet_distance"] for e in entries])),
                                     "by_seed": entries}
    m = results["models"]
    gap = m["true"]["curve"]["128"] - m["file"]["curve"]["128"]
    results["gap_128"] = gap
    results["recovered_by_effective"] = (m["effective"]["curve"]["128"] - m["file"]["curve"]["128"]) / gap if gap else None
    results["minutes"] = (time.time() - started) / 60
    atomic_write_text((out / "upscaled.json"), json.dumps(results, indent=2) + "\n")
    figures(out, {source: runs[names[source, 0]] for source in SOURCES}, results, sampler_steps)
    atomic_write_text((out / "upscaled.md"), page(results))
    return results


def _measure_runs(path: Path, runs: dict[str, Path], clean: Path, n_curve: int, n_table: int, sampler_steps: int, feature_steps: int,
                  progress: bool) -> dict[str, dict]:
    """Per run: the Fig. 3 curve (sharpness by requested c_size) and the Frechet distance of its
    default samples to the held-out images; cached in ``path`` by run name, step and checkpoint time."""
    from microcond.data.source import default_cache_dir
    from microcond.demodata.build import PALETTE
    from microcond.experiments.paper import N_CLASSES, SIZE_CURVE, SQUARE
    from microcond.metrics.evaluate import evaluate, laplacian_variance, load_references
    from microcond.metrics.features import FeatureRecipe
    from microcond.sample.run import Query, Run

    settings = {"n_curve": n_curve, "n_table": n_table, "sampler_steps": sampler_steps, "feature_steps": feature_steps}
    cached = json.loads(path.read_text()) if path.exists() else {}
    refs = None
    for name, folder in runs.items():
        model = Run(folder)
        trained = max((p.stat().st_mtime_ns for p in (folder / "checkpoints").iterdir()), default=0)  # a run trained again
        key = {"step": model.step, "trained": trained, **settings}
        if cached.get(name, {}).get("key") == key:
            continue
        refs = refs or load_references(clean / "eval", (TRAIN_SIZE, TRAIN_SIZE), progress=progress)
        labels = [i % N_CLASSES for i in range(n_curve)]
        curve = {str(s): float(laplacian_variance(model.draw(Query(original_size=(s, s)), list(range(20_000, 20_000 + n_curve)), labels,
                                                             steps=sampler_steps, progress=False)).mean()) for s in SIZE_CURVE}
        samples = model.draw(Query(original_size=SQUARE.original_size), list(range(n_table)), [i % N_CLASSES for i in range(n_table)],
                             steps=sampler_steps, progress=False)
        report = evaluate(samples, refs.images, refs.labels, cache_dir=default_cache_dir() / "features", palette=PALETTE,
                          recipe=FeatureRecipe(steps=feature_steps), progress=progress)
        cached[name] = {"key": key, "curve": curve, "frechet_distance": report["fidelity"]["frechet_distance"]}
        atomic_write_text(path, json.dumps(cached, indent=1) + "\n")
    return cached


def figures(out: Path, runs: dict[str, Path], results: dict, sampler_steps: int = 25) -> None:
    """``upscaled-curve.png`` (sharpness against requested c_size, the three models and the real
    images) and ``upscaled-grid.png`` (the same seeds from each model at c_size 8 and 128)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from microcond.experiments.paper import N_CLASSES
    from microcond.experiments.paperpage import save_size_curve
    from microcond.sample.grid import save_grid
    from microcond.sample.run import Query, Run

    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    real = results["real_curve"]
    ax.plot([int(k) for k in real], list(real.values()), "k--o", label="real images, by true original size")
    for source, row in results["models"].items():
        ax.plot([int(k) for k in row["curve"]], list(row["curve"].values()), "-o", label=f"told the {source} size")
    save_size_curve(fig, ax, [int(k) for k in real], "Size conditioning when 30% of the large files are upscaled", out / "upscaled-curve.png")
    seeds, labels, rows, images = list(range(8)), [i % N_CLASSES for i in range(8)], [], []
    for source in SOURCES:
        model = Run(runs[source])
        for size in (8, 128):
            images.append(model.draw(Query(original_size=(size, size)), seeds, labels, steps=sampler_steps, progress=False))
            rows.append(f"{source}, c_size {size}")
    save_grid(torch.cat(images), out / "upscaled-grid.png", nrow=len(seeds), row_labels=rows,
              title="The same seeds and classes from each model, asked for a small and a large original")


def page(results: dict) -> str:
    """The experiment as Markdown: the estimator on the fakes, then one row per model."""
    e = results["effective_estimates"]
    sizes = list(results["real_curve"])
    lines = [
        "# Upscaled files: conditioning on the file size, the effective size, or the true size",
        "",
        f"{results['fakes']} of the web-like demo data's training images (30% of those above {TRAIN_SIZE} px) replaced by "
        "fakes: area-downscaled by 2-4x and upscaled back with bicubic interpolation, so the file size lies. Three tiny "
        f"size-conditioned models, {results['steps']} steps each, otherwise identical, {results.get('seeds', 1)} training seed(s) each.",
        "",
        f"The scan's effective size on these files: {e['fakes_within_10pct']:.0%} of the fakes within 10% of their true factor, "
        f"{e['natives_flagged_upscaled']:.1%} of the untouched images called upscaled (>= 1.25x), {e['unmeasured']} not measured.",
        "",
        "| told | " + " | ".join(f"c_size {s}" for s in sizes) + " | Spearman | c_size 128 sharpness / real | FD |",
        "| --- " * (len(sizes) + 4) + "|",
        "| real images (by true size) | " + " | ".join(f"{results['real_curve'][s]:.4f}" for s in sizes) + " | | 1.00 | |",
    ]
    for source, row in results["models"].items():
        lines.append(f"| {source} | " + " | ".join(f"{row['curve'][s]:.4f}" for s in sizes)
                     + f" | {row['spearman']:.2f} | {row['sharpness_128_share_of_real']:.2f} | {row['frechet_distance']:.2f} |")
    if results.get("seeds", 1) > 1:
        lines += ["", "c_size 128 sharpness by training seed: " + "; ".join(
            f"{source} " + " / ".join(f"{e['curve']['128']:.4f}" for e in row["by_seed"]) for source, row in results["models"].items()) + "."]
    recovered = results["recovered_by_effective"]
    lines += ["", f"Gap at c_size 128 (true - file): {results['gap_128']:.4f}; the effective size recovers "
              f"{'n/a' if recovered is None else f'{recovered:.0%}'} of it (goal >= 90%). Rows are means over "
              f"{results.get('seeds', 1)} training seed(s).", "",
              "![sharpness against requested size](upscaled-curve.png)", "", "![samples](upscaled-grid.png)", ""]
    return "\n".join(lines)
