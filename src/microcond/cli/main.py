"""The ``microcond`` command: argument parsing and wiring of the stages, no logic of its own.

Here the commands that train (``demo``, ``experiment``, ``demo-data``, ``train``, ``export``) and
``main``; the data commands are in :mod:`microcond.cli.data`, the sampling ones in
:mod:`microcond.cli.sampling`. Each subcommand has one function that declares its flags and
one that calls the stage, imported inside it so that torch-free commands (``scan``, ``report``)
start without importing torch. Settings dataclasses get one flag per field from
:func:`microcond.train.config.add_flags`, as the training config does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap

from microcond.cli.common import OneLineParser, Terminated, example_lines, integer, subparser, unwind_on_sigterm
from microcond.cli.data import add_report, add_scan, add_shard
from microcond.cli.probe import add_probe
from microcond.cli.sampling import add_evaluate, add_sample, add_sweep

# Commands that train: run as a script, they re-execute once with runtime.RUNTIME_ENV set.
REEXEC_COMMANDS = {"train", "demo", "experiment"}

# ---------------------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from microcond.experiments.demo import DemoConfig
    from microcond.train import config as config_mod

    p = subparser(
        sub,
        "demo",
        "Build the demo data, train one tiny model with SDXL's three micro-conditions (original size, crop, target size), then "
        "write sample grids, the paper's Fig. 3 and Fig. 4 sweeps and metrics (about 10 minutes on 2 CPU cores with AVX-512 "
        "BF16). Running it again resumes.",
        ["microcond demo", "microcond demo --out runs/demo2 --steps 6000", "microcond demo --steps 20 --samples 16 --n-train 300 --n-eval 60  # a quick look"],
    )
    config_mod.add_flags(p, DemoConfig, helps={"out": "output folder", "steps": "training steps of 32 images", "samples": "samples for the metrics",
                                               "guidance": "class guidance scale of every sample the demo draws",
                                               "micro_guidance": "micro-condition guidance scale of every sample (0 = none)",
                                               "sampler_steps": "DDIM steps", "n_train": "demo training images", "n_eval": "demo evaluation images",
                                               "feature_steps": "training steps of the metrics' feature classifier",
                                               "crop_samples": "samples per crop query and offset for metrics.json's crop_effect",
                                               "emoji_per_class": "training emoji per class, 0 = all 1,582"})
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from microcond.experiments.demo import DemoConfig, run_demo
    from microcond.train import config as config_mod

    run_demo(DemoConfig(**config_mod.flag_overrides(args, DemoConfig)), progress=not args.no_progress)
    return 0


# --------------------------------------------------------------------------------- experiment


def _add_experiment(sub: argparse._SubParsersAction) -> None:
    from microcond.experiments.paper import Budget
    from microcond.train import config as config_mod

    p = subparser(
        sub,
        "experiment",
        "paper: reproduce the paper's Table 2, Fig. 3, Fig. 4 and Fig. 5 at 32 px on the demo data with one recipe, two training "
        "seeds per model (about 75 minutes on 2 CPU cores with AVX-512 BF16). crop-ablation: the recipe variants behind the pixel presets' defaults.",
        ["microcond experiment paper --out runs/paper --docs docs", "microcond experiment paper --out runs/quick --steps 300 --seeds 1 --table-samples 100",
         "microcond experiment crop-ablation --out runs/ablation",
         "microcond experiment micro-guidance --run runs/paper/runs/size-crop-s0 --out runs/micro-guidance",
         "microcond experiment upscaled --out runs/upscaled"],
    )
    p.add_argument("name", choices=["paper", "crop-ablation", "micro-guidance", "upscaled"], help="which experiment (micro-guidance: "
                   "the Fig. 3 response of a size-conditioned run against the micro-condition guidance scale; upscaled: size "
                   "conditioning on file, effective and true sizes when 30%% of the large files are upscaled fakes)")
    p.add_argument("--run", dest="run_dir", help="micro-guidance: the run to sample (a size-conditioned pixel run)")
    p.add_argument("--out", help="folder for data, runs, grids and results.json (default runs/paper or runs/ablation); "
                                 "paper includes the ablation table when OUT/../ablation/ablation.json exists")
    p.add_argument("--docs", help="paper: write results.md, results.json and the pictures here (e.g. docs; default OUT/page)")
    config_mod.add_flags(p, Budget, helps={"steps": "training steps per model",
                                           "seeds": "training seeds per model", "crop_samples": "samples per cut-off query and per crop offset (crop-ablation: 128)",
                                           "table_samples": "samples per Table 2 row", "curve_samples": "samples per point of the Fig. 3 curve",
                                           "sampler_steps": "DDIM steps of every measurement", "feature_steps": "training steps of the metrics' feature classifier"})
    p.add_argument("--parallel", type=integer(1, 64, "a number of processes"), default=2, help="training processes at once, one thread each")
    p.add_argument("--settings", nargs="*", help="crop-ablation: only these settings (default all; see microcond.experiments.ablation.ABLATIONS)")
    p.set_defaults(run=_run_experiment)


def _run_experiment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from microcond.experiments.ablation import run_ablation
    from microcond.experiments.paper import Budget, run_paper
    from microcond.train import config as config_mod

    given = config_mod.flag_overrides(args, Budget)
    Budget(**given)  # checked before any work, whatever the experiment adds to it
    if args.parallel < 1:
        raise ValueError(f"expected a positive number of training processes, got --parallel {args.parallel}")
    if args.name == "micro-guidance":
        from microcond.experiments.micro_guidance import run_study

        if not args.run_dir:
            raise ValueError("experiment micro-guidance needs --run RUN, a size-conditioned run (e.g. runs/paper/runs/size-crop-s0)")
        out = Path(args.out or Path(args.run_dir) / "micro-guidance")
        results = run_study(Path(args.run_dir), out, n=given.get("curve_samples", 64), steps=given.get("sampler_steps", 25))
        for row in results["rows"]:
            print(f"micro-condition scale {row['micro_guidance']:>4}: c_size 128/8 sharpness {row['ratio_largest_to_smallest']:.2f}x, "
                  f"Spearman {row['spearman']:.2f}, colour shift vs off {row['colour_shift_vs_off']:.4f}")
        print(f"wrote {out / 'micro-guidance.json'}")
        return 0
    if args.name == "upscaled":
        from microcond.experiments.upscaled import run_upscaled

        out = Path(args.out or "runs/upscaled")
        budget = Budget(**given)
        run_upscaled(out, steps=budget.steps, n_curve=budget.curve_samples, n_table=budget.table_samples, sampler_steps=budget.sampler_steps,
                     feature_steps=budget.feature_steps, seeds=budget.seeds, parallel=args.parallel)
        print(f"wrote {out / 'upscaled.md'}")
        return 0
    ablation = args.name == "crop-ablation"
    if ablation:
        results = run_ablation(Path(args.out or "runs/ablation"), Budget(**{"crop_samples": 128, **given}), args.parallel, args.settings)
        print(f"wrote {Path(args.out or 'runs/ablation') / 'ablation.json'} ({len(results['rows'])} settings)")
        return 0
    page = run_paper(Path(args.out or "runs/paper"), Path(args.docs) if args.docs else None, Budget(**given), args.parallel)
    print(f"wrote {page}")
    return 0


# ---------------------------------------------------------------------------------- demo-data


def _add_demo_data(sub: argparse._SubParsersAction) -> None:
    from microcond.demodata.build import ASPECT_MIXES, DemoDataConfig
    from microcond.train import config as config_mod

    p = subparser(
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
    config_mod.add_flags(p, DemoDataConfig, only=("out", "n_train", "n_eval", "seed", "train_size", "aspect_mix", "square_share", "emoji_per_class", "font", "emoji_test", "jobs", "preview"), helps={
        "out": "folder to create, required (a previous demo-data build there is replaced)", "n_train": "training images",
        "n_eval": "evaluation images, other emoji, full resolution", "seed": "seed of every random choice; same seed, same bytes",
        "train_size": "training size in px; about 40%% of originals get a shorter edge",
        "aspect_mix": f"shapes of the non-square originals, one of {', '.join(sorted(ASPECT_MIXES))}: web spreads them over 1:2..2:1, extreme makes "
                      "each 1:2 or 2:1, wide each 2:1 (the crop-conditioning data)",
        "square_share": "share of square originals", "emoji_per_class": "training emoji kept per class, by seeded hash (0 = all)", "font": "colour emoji font (default: the Debian fonts-noto-color-emoji path)",
        "emoji_test": "Unicode emoji-test.txt with the labels (default: the Debian unicode-data path)",
        "jobs": "worker processes", "preview": "write DIR/preview.png, the contact sheet"})
    p.set_defaults(run=_run_demo_data)


def _run_demo_data(args: argparse.Namespace) -> int:
    from microcond.demodata.build import DemoDataConfig, build_demo_data, describe
    from microcond.train import config as config_mod

    given = config_mod.flag_overrides(args, DemoDataConfig)
    if "out" not in given:
        raise ValueError("demo-data needs --out DIR, the folder to create")
    cfg = DemoDataConfig(**given)
    print(describe(build_demo_data(cfg)))
    return 0


# ---------------------------------------------------------------------------------------- train


def _add_train(sub: argparse._SubParsersAction) -> None:
    from microcond.train import config as config_mod

    p = subparser(
        sub,
        "train",
        "Train (or resume) a denoiser with micro-conditioning. Running the same command again resumes.",
        [
            "microcond train --preset tiny --data demo-data/train --out runs/tiny",
            "microcond train run.toml --out runs/a --steps 5000",
            "microcond train --preset tiny --data DIR --signals original_size --out runs/size-only",
            "microcond train --preset tiny --data 'pipe:cat shards/shard-{000000..000009}.tar' --out runs/streamed",
            "torchrun --nproc_per_node=2 -m microcond.cli train --preset tiny --data DIR --out runs/ddp",
            "microcond train --preset sdxl --pretrained /models/sdxl-base --data DIR --out runs/ft --dry-run",
        ],
    )
    p.add_argument("config", nargs="?", help="TOML file of config fields (flat keys); flags override it")
    p.add_argument("--out", help="run folder: config, checkpoints, metrics, loss curve, sample grids")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (metrics still go to metrics.jsonl)")
    p.add_argument("--procs", type=integer(0, 1024, "a number of processes"), default=0, metavar="N",
                   help="CPU: train as N data-parallel processes on this machine, one thread each. Default (0): the "
                        "cores free to this process decide (one process per free core that divides the batch), unless "
                        "OMP_NUM_THREADS is set, torchrun launched it, or a GPU is present (then one process)")
    group = p.add_argument_group("config fields (each overrides the preset and the TOML file)")
    config_mod.add_flags(group)
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import json

    from microcond.train import config as config_mod

    cfg = config_mod.resolve(toml_path=args.config, overrides=config_mod.flag_overrides(args))
    if args.dry_run:
        from microcond.train.memory import describe, memory_plan

        print(json.dumps(config_mod.to_dict(cfg), indent=2))
        layout = 1 if args.argv is None or "WORLD_SIZE" in os.environ else max(args.procs, 1)
        print("\n".join(describe(memory_plan(cfg, world_size=int(os.environ.get("WORLD_SIZE", layout))))), file=sys.stderr)
        return 0
    if not args.out:
        raise ValueError("train needs --out RUN_FOLDER (or --dry-run to only print the config)")
    if not cfg.data:
        raise ValueError("train needs --data: a folder of images, WebDataset shards, or shards to stream (pipe:, URLs, {000..009})")
    layout = _cpu_layout(args, cfg)
    if layout is not None:
        from microcond.train.launch import launch_local

        processes, threads = layout
        if processes > 1:
            return launch_local([*args.argv, "--procs", "1"], processes, threads)  # each rank: this command, torchrun's variables
        import torch

        torch.set_num_threads(threads)
    from microcond.sample.training_grids import TrainingGrids
    from microcond.train.loop import PixelInputs, train

    inputs = PixelInputs
    if cfg.vae or cfg.text_encoders:  # SDXL fine-tuning: VAE latents and text encoders around the UNet
        from microcond.sdxl import SDXLInputs

        inputs = SDXLInputs
    row = train(cfg, args.out, progress=not args.no_progress, inputs=inputs, sample_grid=TrainingGrids())
    if row and os.environ.get("RANK", "0") == "0":
        skipped = row.get("samples_skipped", 0)
        print(f"trained to step {row['step']} ({row['images_seen']} images), loss {row['loss']:.4f}"
              + (f", {skipped} samples skipped while loading (reasons in data.json)" if skipped else "") + f"; run in {args.out}")
    return 0


def _cpu_layout(args: argparse.Namespace, cfg) -> tuple[int, int] | None:
    """(processes, threads) for ``train`` on CPU, or None to train here as the environment says:
    under torchrun, on a GPU, with OMP_NUM_THREADS set, or called from Python (``main([...])``)."""
    import torch

    from microcond.data.urls import expand_urls, is_stream
    from microcond.train.launch import free_cores, plan_layout

    here = args.argv is None or "WORLD_SIZE" in os.environ or torch.cuda.is_available()
    if args.procs < 0 or (args.procs > 1 and here):
        raise ValueError(f"--procs {args.procs}: expected N >= 1 processes, launched by the microcond command on CPU "
                         "(outside torchrun, which chooses its own)")
    if here or (not args.procs and os.environ.get("OMP_NUM_THREADS")):
        return None
    if args.procs:
        if cfg.batch_size % (args.procs * cfg.grad_accumulation):
            raise ValueError(f"--procs {args.procs} must divide batch_size {cfg.batch_size} / grad_accumulation {cfg.grad_accumulation}")
        threads = max(1, free_cores() // args.procs)
        print(f"train: {args.procs} data-parallel process{'es' * (args.procs > 1)} x {threads} thread{'s' * (threads > 1)} (--procs {args.procs})",
              file=sys.stderr)
        return args.procs, threads
    cores, limit, why = free_cores(), 8, ""
    if is_stream(cfg.data):  # every rank and loader worker reads whole shards of its own
        shards = len(expand_urls(cfg.data))
        limit = max(1, shards // max(cfg.workers, 1))
        why = f", at most {limit} for {shards} streamed shard{'s' * (shards > 1)}" + (f" over {cfg.workers} loader workers each" if cfg.workers else "")
    processes, threads = plan_layout(cores, cfg.batch_size, cfg.grad_accumulation, max_processes=limit)
    print(f"train: {processes} data-parallel process{'es' * (processes > 1)} x {threads} thread{'s' * (threads > 1)} "
          f"({cores} free core{'s' * (cores > 1)}, a process count that divides batch {cfg.batch_size}{why}; --procs N to choose)", file=sys.stderr)
    return processes, threads


# --------------------------------------------------------------------------------------- export


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "export",
        "Write a run's EMA UNet as a diffusers UNet2DConditionModel folder (SDXL parameter names), or "
        "a whole StableDiffusionXLPipeline folder for a run trained with --vae and --text-encoders, or a LoRA run's adapters as one LoRA file.",
        ["microcond export runs/tiny --diffusers exported/tiny-unet", "microcond export runs/ft --diffusers out/unet --no-ema",
         "microcond export runs/ft --pipeline out/sdxl-ft   # StableDiffusionXLPipeline.from_pretrained('out/sdxl-ft')",
         "microcond export runs/lora --lora out/lora.safetensors   # pipe.load_lora_weights('out/lora.safetensors')"],
    )
    p.add_argument("run_dir", metavar="RUN", help="a run folder written by `microcond train`")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--diffusers", metavar="DIR", help="output folder for the UNet (save_pretrained layout)")
    target.add_argument("--pipeline", metavar="DIR", help="output folder for a full pipeline: unet/ plus the run's VAE and "
                        "text encoders (hard-linked where possible), scheduler/, model_index.json (a LoRA run: adapters merged)")
    target.add_argument("--lora", metavar="FILE", help="a LoRA run: its adapters as a diffusers LoRA .safetensors file")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    if args.lora:
        from microcond.sample.run import export_lora

        print(f"wrote {export_lora(args.run_dir, args.lora, ema=not args.no_ema)} (load with StableDiffusionXLPipeline.load_lora_weights)")
        return 0
    if args.pipeline:
        from microcond.sample.export import export_pipeline

        out = export_pipeline(args.run_dir, args.pipeline, ema=not args.no_ema)
        print(f"wrote {out} (load with StableDiffusionXLPipeline.from_pretrained)")
        return 0
    from microcond.sample.run import export_diffusers

    out = export_diffusers(args.run_dir, args.diffusers, ema=not args.no_ema)
    print(f"wrote {out} (load with UNet2DConditionModel.from_pretrained)")
    return 0


# ---------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="microcond",
        description=textwrap.dedent(
            """\
            Train and sample diffusion models conditioned on how each training image was made
            (SDXL micro-conditioning: original size, crop, target size). Sizes are (height,
            width) and crops (top, left), in pixels."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=example_lines("microcond demo", "microcond demo --help"),
    )
    from microcond import __version__

    parser.add_argument("--version", action="version", version=f"microcond {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(sub)
    _add_experiment(sub)
    _add_train(sub)
    _add_export(sub)
    add_sample(sub)
    add_sweep(sub)
    add_evaluate(sub)
    add_probe(sub)
    _add_demo_data(sub)
    add_shard(sub)
    add_scan(sub)
    add_report(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``microcond`` console script."""
    # bitsandbytes' CPU backend (imported by diffusers through peft, where installed) warns at every
    # start that an optional 4-bit kernel it would fetch from the Hub is absent; nothing here runs 4-bit.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error already printed as one line
        return done.code if isinstance(done.code, int) else 2
    args.argv = sys.argv[1:] if argv is None else None  # process-level choices only for the console command
    if argv is None and args.command in REEXEC_COMMANDS and not getattr(args, "dry_run", False):
        from microcond.train.launch import ensure_runtime_env

        ensure_runtime_env(sys.argv[1:])
    if argv is None:  # the console command: SIGTERM unwinds like an error, so locks and children are released
        unwind_on_sigterm()
    try:
        return args.run(args)
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except (ValueError, OverflowError, OSError, RuntimeError) as err:
        # One line, what was expected and found. Exit 2 for a usage mistake (a bad value, a path
        # that is not there), 1 for a failure of the work itself (a disk, a process, the numbers).
        if os.environ.get("MICROCOND_DEBUG"):
            raise
        print(f"microcond {args.command}: error: {err}", file=sys.stderr)
        usage = isinstance(err, (ValueError, OverflowError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError))
        return 2 if usage else 1
    except Terminated as stop:
        print(f"microcond {args.command}: stopped by {stop}" + ("; run the same command again to resume" if args.command == "train" else ""),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"microcond {args.command}: interrupted" + ("; run the same command again to resume" if args.command == "train" else ""),
              file=sys.stderr)
        return 1
