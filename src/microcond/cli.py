"""The ``microcond`` command: argument parsing and wiring of the stages, no logic of its own.

Each subcommand has one ``_add_<name>`` function that declares its flags and one ``_run_<name>``
function that calls the stage. Stages are imported inside ``_run_*`` so that torch-free commands
(``scan``, ``report``) start without importing torch.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap

EPILOG_INDENT = "  "
# Commands that train: run as a script, they re-execute once with train.RUNTIME_ENV set.
REEXEC_COMMANDS = {"train", "demo", "experiment"}


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(EPILOG_INDENT + line for line in lines)


def _subparser(sub: argparse._SubParsersAction, name: str, help: str, examples: list[str]) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=_examples(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# ---------------------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from microcond.demo import DemoConfig

    d = DemoConfig()
    p = _subparser(
        sub,
        "demo",
        "Build the demo data, train a tiny model with size and crop conditioning (about 12 minutes on "
        "2 CPU cores), then write sample grids, both sweeps and metrics. Running it again resumes.",
        ["microcond demo", "microcond demo --out runs/demo2 --steps 6000", "microcond demo --steps 20 --samples 16 --n-train 300 --n-eval 60  # a quick look"],
    )
    p.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps of 32 images (default {d.steps})")
    p.add_argument("--samples", type=int, default=d.samples, help=f"samples for the metrics (default {d.samples})")
    p.add_argument("--sampler-steps", type=int, default=d.sampler_steps, help=f"DDIM steps (default {d.sampler_steps})")
    p.add_argument("--n-train", type=int, default=d.n_train, help=f"demo training images (default {d.n_train})")
    p.add_argument("--n-eval", type=int, default=d.n_eval, help=f"demo evaluation images (default {d.n_eval})")
    p.add_argument("--feature-steps", type=int, default=d.feature_steps, help="training steps of the metrics' feature classifier")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from microcond.demo import DemoConfig, run_demo

    run_demo(DemoConfig(args.out, args.steps, args.samples, args.sampler_steps, args.n_train, args.n_eval, args.feature_steps), progress=not args.no_progress)
    return 0


# --------------------------------------------------------------------------------- experiment


def _add_experiment(sub: argparse._SubParsersAction) -> None:
    from microcond.experiment import Budget

    b = Budget()
    p = _subparser(
        sub,
        "experiment",
        "paper: reproduce the paper's Table 2, Fig. 3, Fig. 4 and Fig. 5 at 32 px on the demo data, two training seeds per "
        "model (about 60 minutes on 2 CPU cores). crop-ablation: the recipe variants behind the pixel presets' defaults.",
        ["microcond experiment paper --out runs/paper --docs docs", "microcond experiment paper --out runs/quick --steps 300 --crop-steps 300 --seeds 1 --table-samples 100",
         "microcond experiment crop-ablation --out runs/ablation"],
    )
    p.add_argument("name", choices=["paper", "crop-ablation"], help="which experiment")
    p.add_argument("--out", help="folder for data, runs, grids and results.json (default runs/paper or runs/ablation); "
                                 "paper includes the ablation table when OUT/../ablation/ablation.json exists")
    p.add_argument("--docs", help="paper: write results.md, results.json and the pictures here (e.g. docs; default OUT/page)")
    p.add_argument("--steps", type=int, help=f"training steps per model (paper: of the size recipe's models; default {b.steps})")
    p.add_argument("--crop-steps", type=int, help=f"paper: training steps of the crop recipe's models (default {b.crop_steps})")
    p.add_argument("--seeds", type=int, default=b.seeds, help=f"training seeds per model (default {b.seeds})")
    p.add_argument("--table-samples", type=int, default=b.table_samples)
    p.add_argument("--crop-samples", type=int, help=f"samples per cut-off query and per crop offset (default {b.crop_samples}; crop-ablation 128)")
    p.add_argument("--curve-samples", type=int, default=b.curve_samples)
    p.add_argument("--sampler-steps", type=int, default=b.sampler_steps)
    p.add_argument("--feature-steps", type=int, default=b.feature_steps)
    p.add_argument("--parallel", type=int, default=2, help="training processes at once, one thread each")
    p.add_argument("--settings", nargs="*", help="crop-ablation: only these settings (default all; see microcond.experiment.ABLATIONS)")
    p.set_defaults(run=_run_experiment)


def _run_experiment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from microcond.experiment import Budget, run_ablation, run_paper

    for flag in ("steps", "crop_steps", "seeds", "table_samples", "crop_samples", "curve_samples", "sampler_steps", "feature_steps", "parallel"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    ablation = args.name == "crop-ablation"
    given = {k: getattr(args, k) for k in ("steps", "crop_steps", "seeds", "table_samples", "crop_samples", "curve_samples", "sampler_steps", "feature_steps") if getattr(args, k) is not None}
    if ablation:
        results = run_ablation(Path(args.out or "runs/ablation"), Budget(**{"crop_samples": 128, **given}), args.parallel, args.settings)
        print(f"wrote {Path(args.out or 'runs/ablation') / 'ablation.json'} ({len(results['rows'])} settings)")
        return 0
    page = run_paper(Path(args.out or "runs/paper"), Path(args.docs) if args.docs else None, Budget(**given), args.parallel)
    print(f"wrote {page}")
    return 0


# ---------------------------------------------------------------------------------- demo-data


def _add_demo_data(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub,
        "demo-data",
        "Build the demo image set: emoji from the installed Noto Color Emoji font on canvases of "
        "web-like shapes and sizes, with labels and object boxes (train and held-out eval splits).",
        [
            "microcond demo-data --out data/demo",
            "microcond demo-data --out data/small --n-train 600 --n-eval 100 --seed 1",
            "microcond demo-data --out data/demo64 --train-size 64 --font /path/to/ColorEmoji.ttf",
        ],
    )
    p.add_argument("--out", required=True, help="folder to create (a previous demo-data build there is replaced)")
    p.add_argument("--n-train", type=int, default=6000, help="training images (default 6000)")
    p.add_argument("--n-eval", type=int, default=1000, help="evaluation images, other emoji, full resolution (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice; same seed, same bytes (default 0)")
    p.add_argument("--train-size", type=int, default=32,
                   help="training size in px; about 40%% of originals get a shorter edge (default 32)")
    p.add_argument("--aspect-mix", choices=("web", "extreme"), default="web",
                   help="non-square originals: web = spread over 1:2..2:1; extreme = all 1:2 or 2:1, "
                        "where crops cut most (the crop-conditioning models' data; default web)")
    p.add_argument("--font", help="colour emoji font (default: the Debian fonts-noto-color-emoji path)")
    p.add_argument("--emoji-test", help="Unicode emoji-test.txt with the labels (default: the Debian unicode-data path)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    p.add_argument("--no-preview", action="store_true", help="do not write DIR/preview.png, the contact sheet")
    p.set_defaults(run=_run_demo_data)


def _run_demo_data(args: argparse.Namespace) -> int:
    from microcond.demodata import DemoDataConfig, build_demo_data, describe

    cfg = DemoDataConfig(
        out=args.out, seed=args.seed, n_train=args.n_train, n_eval=args.n_eval, train_size=args.train_size,
        aspect_mix=args.aspect_mix, jobs=args.jobs, font=args.font, emoji_test=args.emoji_test, preview=not args.no_preview,
    )
    print(describe(build_demo_data(cfg)))
    return 0


# ---------------------------------------------------------------------------------------- train


def _add_train(sub: argparse._SubParsersAction) -> None:
    from microcond import config as config_mod

    p = _subparser(
        sub,
        "train",
        "Train (or resume) a denoiser with micro-conditioning. Running the same command again resumes.",
        [
            "microcond train --preset tiny --data demo-data/train --out runs/tiny",
            "microcond train run.toml --out runs/a --steps 5000",
            "microcond train --preset tiny --data DIR --signals original_size --out runs/size-only",
            "torchrun --nproc_per_node=2 -m microcond.cli train --preset tiny --data DIR --out runs/ddp",
            "microcond train --preset sdxl --pretrained /models/sdxl-base --data DIR --out runs/ft --dry-run",
        ],
    )
    p.add_argument("config", nargs="?", help="TOML file of config fields (flat keys); flags override it")
    p.add_argument("--out", help="run folder: config, checkpoints, metrics, loss curve, sample grids")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics still go to metrics.jsonl)")
    group = p.add_argument_group("config fields (each overrides the preset and the TOML file)")
    config_mod.add_flags(group)
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import json

    from microcond import config as config_mod

    cfg = config_mod.resolve(toml_path=args.config, overrides=config_mod.flag_overrides(args))
    if args.dry_run:
        print(json.dumps(config_mod.to_dict(cfg), indent=2))
        return 0
    if not args.out:
        raise ValueError("train needs --out RUN_FOLDER (or --dry-run to only print the config)")
    if not cfg.data:
        raise ValueError("train needs --data: a folder of images or WebDataset shards")
    from microcond.train import train

    row = train(cfg, args.out, progress=not args.no_progress)
    if row:
        print(f"trained to step {row['step']} ({row['images_seen']} images), loss {row['loss']:.4f}; run in {args.out}")
    return 0


# --------------------------------------------------------------------------------------- export


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub,
        "export",
        "Write a run's EMA UNet as a diffusers UNet2DConditionModel folder (SDXL parameter names), or "
        "a whole StableDiffusionXLPipeline folder for a run trained with --vae and --text-encoders.",
        ["microcond export runs/tiny --diffusers exported/tiny-unet", "microcond export runs/ft --diffusers out/unet --no-ema",
         "microcond export runs/ft --pipeline out/sdxl-ft   # StableDiffusionXLPipeline.from_pretrained('out/sdxl-ft')"],
    )
    p.add_argument("run_dir", metavar="RUN", help="a run folder written by `microcond train`")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--diffusers", metavar="DIR", help="output folder for the UNet (save_pretrained layout)")
    target.add_argument("--pipeline", metavar="DIR", help="output folder for a full pipeline: unet/ plus the run's VAE and "
                        "text encoders (hard-linked where possible), scheduler/, model_index.json")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    if args.pipeline:
        from microcond.sdxl import export_pipeline

        out = export_pipeline(args.run_dir, args.pipeline, ema=not args.no_ema)
        print(f"wrote {out} (load with StableDiffusionXLPipeline.from_pretrained)")
        return 0
    from microcond.runs import export_diffusers

    out = export_diffusers(args.run_dir, args.diffusers, ema=not args.no_ema)
    print(f"wrote {out} (load with UNet2DConditionModel.from_pretrained)")
    return 0


# ---------------------------------------------------------------------------------------- shard


def _add_shard(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub,
        "shard",
        "Write WebDataset tar shards from an image folder: each sample is the image file's bytes plus "
        "JSON with original_height, original_width (after EXIF orientation) and label.",
        [
            "microcond shard data/demo/train --out shards/train",
            "microcond shard photos --index photos.parquet --out shards/photos --max-count 5000",
            "microcond shard photos --out shards/big --min-original-edge 512",
        ],
    )
    p.add_argument("folder", metavar="DIR", help="image folder (labels from DIR/metadata.jsonl when present)")
    p.add_argument("--index", help="index from `microcond scan` (default: scan DIR into the cache folder)")
    p.add_argument("--out", required=True, metavar="SHARDDIR", help="empty or new folder for shard-NNNNNN.tar")
    p.add_argument("--max-count", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--min-original-edge", type=int, default=0, help="leave out images with a shorter original edge (default 0)")
    p.add_argument("--cache", help="folder for the scan index when --index is not given (default $MICROCOND_CACHE)")
    p.set_defaults(run=_run_shard)


def _run_shard(args: argparse.Namespace) -> int:
    from microcond.data.loader import ImageSource, default_cache_dir
    from microcond.data.shards import write_shards

    source = ImageSource.from_folder(args.folder, args.index, min_original_edge=args.min_original_edge,
                                     cache_dir=args.cache or default_cache_dir())
    shards = write_shards(source, args.out, max_count=args.max_count)
    print(f"wrote {len(source)} images into {len(shards)} shards in {args.out}; "
          f"{len(source.skipped)} skipped, {source.dropped_small} below --min-original-edge")
    for name, reason in source.skipped:
        print(f"skipped {name}: {reason}")
    return 0


# ----------------------------------------------------------------------------------------- scan


def _add_scan(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub,
        "scan",
        "Record every image's original size (height, width after EXIF orientation) from its header, "
        "into a Parquet index; bad files are listed with their reason. Rescans redo changed files only.",
        [
            "microcond scan photos --out photos/index.parquet",
            "microcond scan photos more/extra.jpg --out index.parquet --list-problems",
            "microcond scan photos --out index.parquet --max-pixels 50000000 --workers 4",
        ],
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image folders (walked) and image files")
    p.add_argument("--out", required=True, help="index file to write (or update, if it exists)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="images with more pixels are 'too_large' (default 178956970, Pillow's bomb limit)")
    p.add_argument("--workers", type=int, default=None, help="processes reading headers (default: every core)")
    p.add_argument("--all-files", action="store_true", help="probe every file, not only image extensions")
    p.add_argument("--list-problems", action="store_true", help="print every unusable file (default: the first 20)")
    p.set_defaults(run=_run_scan)


def _run_scan(args: argparse.Namespace) -> int:
    from microcond.data.scan import read_index, scan

    limit = {} if args.max_pixels is None else {"max_pixels": args.max_pixels}
    summary = scan(args.paths, args.out, workers=args.workers, all_files=args.all_files, **limit)
    if summary.full_rescan:
        print(f"note: {summary.full_rescan}")
    for folder, reason in summary.unreadable_folders:
        print(f"warning: cannot list folder {folder}: {reason}")
    problems = summary.first_problems
    if args.list_problems:
        table = read_index(args.out, usable=False, columns=["path", "status", "reason"]).to_pydict()
        problems = list(zip(table["path"], table["status"], table["reason"]))
    for path, status, reason in problems:
        print(f"{status:<11} {path}: {reason}")
    shown, total = len(problems), sum(summary.problems.values())
    if shown < total:
        print(f"... {total - shown} more unusable files: --list-problems prints all (each row of the index has its reason)")
    print(summary.line())
    return 0


# --------------------------------------------------------------------------------------- report


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub,
        "report",
        "The paper's Fig. 2 for your data: size histogram, what a minimum-edge filter would discard, "
        "aspect ratios and bucket fill, printed and written as Markdown plus PNGs.",
        [
            "microcond report photos/index.parquet --out report/",
            "microcond report index.parquet --out report/ --buckets base:512",
        ],
    )
    p.add_argument("index", metavar="INDEX", help="index written by `microcond scan`")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md and the PNGs")
    p.add_argument("--min-edges", nargs="+", type=int, default=[64, 128, 256, 512, 1024], metavar="N",
                   help="thresholds of the minimum-size table (default: the paper's 64 128 256 512 1024)")
    p.add_argument("--buckets", default="sdxl",
                   help="bucket set to fill: sdxl, base:1024, base:512:step=32, 512x512,512x768 (default sdxl)")
    p.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from microcond.data.report import write_report

    print(write_report(args.index, args.out, buckets=args.buckets, min_edges=args.min_edges))
    return 0


# ------------------------------------------------------------------------ sample, sweep, evaluate


def _pair(text: str) -> tuple[int, int]:
    """'TOP,LEFT' or 'H,W' (also 'HxW') -> a pair of ints, for list flags."""
    parts = text.replace("x", ",").split(",")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected two integers like 0,16, got {text!r}")
    return int(parts[0]), int(parts[1])


def _add_query_flags(p: argparse.ArgumentParser, sweep: str | None = None) -> None:
    """Micro-condition and guidance flags shared by sample, sweep and evaluate."""
    if sweep != "original_size":
        p.add_argument("--original-size", nargs=2, type=int, metavar=("H", "W"), help="c_size; default: the target size")
    if sweep != "crop":
        p.add_argument("--crop", nargs=2, type=int, metavar=("TOP", "LEFT"), default=(0, 0), help="c_crop; default 0 0 (uncropped)")
    p.add_argument("--target-size", nargs=2, type=int, metavar=("H", "W"), help="c_ar; default: the model's resolution")
    p.add_argument("--class", dest="label", type=int, default=-1, help="class id (default -1: the null class)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--negative-original-size", nargs=2, type=int, metavar=("H", "W"), help="guidance partner's c_size")
    p.add_argument("--negative-crop", nargs=2, type=int, metavar=("TOP", "LEFT"), help="guidance partner's c_crop")
    p.add_argument("--negative-target-size", nargs=2, type=int, metavar=("H", "W"), help="guidance partner's c_ar")
    p.add_argument("--null-micro", action="store_true", help="guidance partner uses the null (dropped) micro-conditions")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    p.add_argument("--scheduler", choices=("ddim", "euler"), default="ddim")


def _check_guidance(guidance: float) -> None:
    """The guidance scale w of ``u + w (c - u)``: finite and >= 0 (NaN would sample black images)."""
    if not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"--guidance must be a finite number >= 0 (1 = no guidance, 0 = the guidance partner alone), got {guidance}")


def _query(args: argparse.Namespace):
    from microcond.inference import Query

    pair = lambda v: tuple(v) if v is not None else None  # noqa: E731
    return Query(
        original_size=pair(getattr(args, "original_size", None)),
        crop_top_left=tuple(getattr(args, "crop", None) or (0, 0)),
        target_size=pair(args.target_size),
        label=args.label,
        guidance=args.guidance,
        negative_original_size=pair(args.negative_original_size),
        negative_crop_top_left=pair(args.negative_crop),
        negative_target_size=pair(args.negative_target_size),
        null_micro=args.null_micro,
    )


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub,
        "sample",
        "Sample from a trained run with chosen micro-conditions; writes a grid PNG and one PNG per sample.",
        [
            "microcond sample runs/demo --n 16 --out runs/demo/samples/default",
            "microcond sample runs/demo --original-size 128 128 --crop 0 0 --class 2 --guidance 2",
            "microcond sample runs/demo --original-size 64 128 --crop 0 16 --null-micro --guidance 1.5",
        ],
    )
    p.add_argument("run_dir", metavar="RUN", help="a run folder written by `microcond train`")
    _add_query_flags(p)
    p.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed SEED+i, whatever --n or --batch-size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", help="output folder (default RUN/samples/cli)")
    p.set_defaults(run=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from microcond.grid import save_grid, save_images
    from microcond.inference import Model

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    _check_guidance(args.guidance)
    model = Model(args.run_dir)
    seeds = list(range(args.seed, args.seed + args.n))
    images = model.draw(_query(args), seeds, steps=args.steps, scheduler=args.scheduler, batch_size=args.batch_size)
    out = Path(args.out or Path(args.run_dir) / "samples" / "cli")
    grid = save_grid(images, out / "grid.png", nrow=min(8, args.n))
    save_images(images, out, [f"seed-{s:06d}" for s in seeds])
    print(f"wrote {args.n} samples to {out} (grid: {grid})")
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub,
        "sweep",
        "One grid: rows are seeds, columns are values of c_size (paper Fig. 3) or c_crop (Fig. 4).",
        [
            "microcond sweep runs/demo --original-size 8 16 32 64 128 --out fig3.png",
            "microcond sweep runs/demo --crop 0,0 0,8 0,16 0,32 --original-size-fixed 64 128 --out fig4.png",
        ],
    )
    p.add_argument("run_dir", metavar="RUN")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--original-size", dest="sizes", nargs="+", type=int, metavar="S", help="short sides of c_size to sweep")
    what.add_argument("--crop", dest="crops", nargs="+", type=_pair, metavar="TOP,LEFT", help="c_crop values to sweep")
    p.add_argument("--original-size-fixed", nargs=2, type=int, metavar=("H", "W"), help="c_size held fixed in a crop sweep (default: the target)")
    p.add_argument("--target-size", nargs=2, type=int, metavar=("H", "W"), help="c_ar; default: the model's resolution")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5], help="one grid row per seed")
    p.add_argument("--class", dest="label", type=int, default=-1)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scheduler", choices=("ddim", "euler"), default="ddim")
    p.add_argument("--out", help="grid PNG (default RUN/sweeps/<kind>.png)")
    p.set_defaults(run=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from microcond.grid import save_grid
    from microcond.inference import Model, Query

    _check_guidance(args.guidance)
    model = Model(args.run_dir)
    kind, values = ("original_size", args.sizes) if args.sizes else ("crop", args.crops)
    fixed = tuple(args.original_size_fixed) if args.original_size_fixed else None
    query = Query(original_size=fixed, target_size=tuple(args.target_size) if args.target_size else None, label=args.label, guidance=args.guidance)
    images, columns = model.sweep(kind, values, args.seeds, query, steps=args.steps, scheduler=args.scheduler)
    out = Path(args.out or Path(args.run_dir) / "sweeps" / f"{kind}.png")
    title = f"{Path(args.run_dir).name} step {model.step}: " + ("c_size sweep (paper Fig. 3)" if kind == "original_size" else f"c_crop sweep, c_size {fixed or 'target'} (paper Fig. 4)")
    save_grid(images.flatten(0, 1), out, nrow=len(values), row_labels=[f"seed {s}" for s in args.seeds], col_labels=columns, title=title)
    print(f"wrote {out}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = _subparser(
        sub,
        "evaluate",
        "In-domain metrics of a run's samples against real images: sharpness, cut-off rate, FD/KID, SWD.",
        [
            "microcond evaluate runs/demo --ref demo-data/eval --n 500",
            "microcond evaluate runs/demo --ref demo-data/eval --original-size 8 8 --n 200 --out small.json",
        ],
    )
    p.add_argument("run_dir", metavar="RUN")
    p.add_argument("--ref", required=True, metavar="DIR", help="real images (the demo data's eval split, or class sub-folders)")
    _add_query_flags(p)
    p.add_argument("--n", type=int, default=500, help="samples to draw (default 500), classes cycled over the reference labels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feature-steps", type=int, default=300, help="training steps of the feature classifier (cached per data and recipe)")
    p.add_argument("--out", help="metrics JSON (default RUN/metrics/evaluate.json)")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from microcond.data.loader import default_cache_dir
    from microcond.evaluate import evaluate, format_report, load_references
    from microcond.features import FeatureRecipe
    from microcond.inference import Model, palette_for, write_metrics

    _check_guidance(args.guidance)
    model = Model(args.run_dir)
    refs = load_references(args.ref, model.shape[1:])
    labels = [i % model.cfg.num_classes for i in range(args.n)] if model.cfg.num_classes else None
    seeds = list(range(args.seed, args.seed + args.n))
    samples = model.draw(_query(args), seeds, labels, steps=args.steps, scheduler=args.scheduler)
    ref_labels = refs.labels if refs.labels is not None else [0] * len(refs.images)
    report = evaluate(samples, refs.images, ref_labels, cache_dir=default_cache_dir() / "features", palette=palette_for(args.ref), recipe=FeatureRecipe(steps=args.feature_steps))
    out = Path(args.out or Path(args.run_dir) / "metrics" / "evaluate.json")
    write_metrics({"query": vars(_query(args)), **report}, out)
    print(format_report(report))
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microcond",
        description=textwrap.dedent(
            """\
            Train and sample diffusion models conditioned on how each training image was made
            (SDXL micro-conditioning: original size, crop, target size). Sizes are (height,
            width) and crops (top, left), in pixels."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples("microcond demo", "microcond demo --help"),
    )
    from microcond import __version__

    parser.add_argument("--version", action="version", version=f"microcond {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(sub)
    _add_experiment(sub)
    _add_train(sub)
    _add_export(sub)
    _add_sample(sub)
    _add_sweep(sub)
    _add_evaluate(sub)
    _add_demo_data(sub)
    _add_shard(sub)
    _add_scan(sub)
    _add_report(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``microcond`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and args.command in REEXEC_COMMANDS and not getattr(args, "dry_run", False):
        from microcond.train import ensure_runtime_env

        ensure_runtime_env(sys.argv[1:])
    try:
        return args.run(args)
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except (ValueError, OSError, RuntimeError) as err:
        # A user mistake: one line, what was expected and found, non-zero exit.
        if os.environ.get("MICROCOND_DEBUG"):
            raise
        print(f"microcond {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"microcond {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
