"""Commands on a trained run: ``sample``, ``sweep``, ``evaluate``."""

from __future__ import annotations

import argparse

from microcond.cli.common import OFFSET, SCALE, SEED, SIZE, integer, subparser

STEPS = integer(1, 10_000, "a number of sampler steps")
LABEL = integer(-1, 2**31 - 1, "a class id (-1: the null class)")
SAMPLES = integer(1, 1_000_000, "a number of samples")


# ------------------------------------------------------------------------ sample, sweep, evaluate


def _pair(text: str) -> tuple[int, int]:
    """'TOP,LEFT' or 'H,W' (also 'HxW') -> a pair of ints, for list flags."""
    parts = text.replace("x", ",").split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) <= 1 << 20 for p in parts):
        raise argparse.ArgumentTypeError(f"expected two integers from 0 to {1 << 20} like 0,16, got {text!r}")
    return int(parts[0]), int(parts[1])


def add_query_flags(p: argparse.ArgumentParser, sweep: str | None = None) -> None:
    """Micro-condition and guidance flags shared by sample, sweep and evaluate."""
    if sweep != "original_size":
        p.add_argument("--original-size", nargs=2, type=SIZE, metavar=("H", "W"), help="c_size; default: the target size")
    if sweep != "crop":
        p.add_argument("--crop", nargs=2, type=OFFSET, metavar=("TOP", "LEFT"), default=(0, 0), help="c_crop; default 0 0 (uncropped)")
    p.add_argument("--target-size", nargs=2, type=SIZE, metavar=("H", "W"), help="c_ar; default: the model's resolution")
    p.add_argument("--class", dest="label", type=LABEL, default=-1, help="class id (default -1: the null class)")
    p.add_argument("--guidance", type=SCALE, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--negative-original-size", nargs=2, type=SIZE, metavar=("H", "W"), help="guidance partner's c_size")
    p.add_argument("--negative-crop", nargs=2, type=OFFSET, metavar=("TOP", "LEFT"), help="guidance partner's c_crop")
    p.add_argument("--negative-target-size", nargs=2, type=SIZE, metavar=("H", "W"), help="guidance partner's c_ar")
    p.add_argument("--null-micro", action="store_true", help="guidance partner uses the null (dropped) micro-conditions")
    add_guidance_and_prompt_flags(p)
    p.add_argument("--steps", type=STEPS, default=50, help="sampler steps (default 50)")
    p.add_argument("--scheduler", choices=("ddim", "euler"), default="ddim")


def add_guidance_and_prompt_flags(p: argparse.ArgumentParser) -> None:
    """Micro-condition guidance and, for runs trained with text encoders, the prompts."""
    p.add_argument("--micro-guidance", type=SCALE, metavar="S",
                   help="a separate guidance scale for the micro-conditions (default: off, plain guidance); guides away "
                        "from the negative micro-conditions, else the null ones")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--prompt", help="text runs: the prompt of every sample")
    text.add_argument("--prompts", metavar="FILE", help="text runs: prompts, one per line; sample (or sweep row) i takes line i mod count")
    p.add_argument("--negative-prompt", help="text runs: the guidance partner's prompt (default: the dropped caption, zero text)")


def _prompts(args: argparse.Namespace) -> list[str] | None:
    if args.prompts:
        from microcond.sdxl.text import read_prompts

        return read_prompts(args.prompts)
    return [args.prompt] if args.prompt is not None else None


def _query(args: argparse.Namespace):
    from microcond.sample.run import Query

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
        micro_guidance=args.micro_guidance,
        negative_prompt=args.negative_prompt,
    )


def add_sample(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "sample",
        "Sample from a trained run with chosen micro-conditions; writes a grid PNG and one PNG per sample.",
        [
            "microcond sample runs/demo/run --n 16 --out runs/demo/run/samples/default",
            "microcond sample runs/demo/run --original-size 128 128 --class 2 --guidance 2",
            "microcond sample runs/demo/run --original-size 64 128 --crop 0 16 --null-micro --guidance 1.5",
            "microcond sample runs/demo/run --original-size 128 128 --micro-guidance 3",
            "microcond sample runs/sdxl-ft --prompt 'a red fox in the snow' --guidance 5 --original-size 1024 1024 --n 4",
        ],
    )
    p.add_argument("run_dir", metavar="RUN", help="a run folder written by `microcond train`")
    add_query_flags(p)
    p.add_argument("--n", type=SAMPLES, default=16, help="number of samples (default 16)")
    p.add_argument("--seed", type=SEED, default=0, help="sample i uses seed SEED+i, whatever --n or --batch-size")
    p.add_argument("--batch-size", type=integer(1, 65536, "a batch size"), default=64)
    p.add_argument("--out", help="output folder (default RUN/samples/cli)")
    p.set_defaults(run=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from microcond.sample.grid import save_grid, save_images
    from microcond.sample.run import Run

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    model = Run(args.run_dir)
    seeds = list(range(args.seed, args.seed + args.n))
    images = model.draw(_query(args), seeds, prompts=_prompts(args), steps=args.steps, scheduler=args.scheduler, batch_size=args.batch_size)
    out = Path(args.out or Path(args.run_dir) / "samples" / "cli")
    grid = save_grid(images, out / "grid.png", nrow=min(8, args.n))
    save_images(images, out, [f"seed-{s:06d}" for s in seeds])
    print(f"wrote {args.n} samples to {out} (grid: {grid})")
    return 0


def add_sweep(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "sweep",
        "One grid: rows are seeds, columns are values of c_size (paper Fig. 3) or c_crop (Fig. 4).",
        [
            "microcond sweep runs/demo/run --original-size 8 16 32 64 128 --out fig3.png",
            "microcond sweep runs/demo/run --crop 0,0 0,8 0,16 0,32 --original-size-fixed 64 128 --out fig4.png",
        ],
    )
    p.add_argument("run_dir", metavar="RUN")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--original-size", dest="sizes", nargs="+", type=SIZE, metavar="S", help="short sides of c_size to sweep")
    what.add_argument("--crop", dest="crops", nargs="+", type=_pair, metavar="TOP,LEFT", help="c_crop values to sweep")
    p.add_argument("--original-size-fixed", nargs=2, type=SIZE, metavar=("H", "W"), help="c_size held fixed in a crop sweep (default: the target)")
    p.add_argument("--target-size", nargs=2, type=SIZE, metavar=("H", "W"), help="c_ar; default: the model's resolution")
    p.add_argument("--seeds", nargs="+", type=SEED, default=[0, 1, 2, 3, 4, 5], help="one grid row per seed")
    p.add_argument("--class", dest="label", type=LABEL, default=-1)
    p.add_argument("--guidance", type=SCALE, default=1.0)
    add_guidance_and_prompt_flags(p)
    p.add_argument("--steps", type=STEPS, default=50)
    p.add_argument("--scheduler", choices=("ddim", "euler"), default="ddim")
    p.add_argument("--out", help="grid PNG (default RUN/sweeps/<kind>.png)")
    p.set_defaults(run=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from microcond.sample.run import Query, Run

    model = Run(args.run_dir)
    kind, values = ("original_size", args.sizes) if args.sizes else ("crop", args.crops)
    fixed = tuple(args.original_size_fixed) if args.original_size_fixed else None
    query = Query(original_size=fixed, target_size=tuple(args.target_size) if args.target_size else None, label=args.label,
                  guidance=args.guidance, micro_guidance=args.micro_guidance, negative_prompt=args.negative_prompt)
    out = Path(args.out or Path(args.run_dir) / "sweeps" / f"{kind}.png")
    model.sweep_grid(kind, values, args.seeds, query, out, prompts=_prompts(args), steps=args.steps, scheduler=args.scheduler)
    print(f"wrote {out}")
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "evaluate",
        "In-domain metrics of a run's samples against real images: sharpness, cut-off rate, FD/KID, SWD.",
        [
            "microcond evaluate runs/demo/run --ref runs/demo/data-wide/eval --n 500",
            "microcond evaluate runs/demo/run --ref runs/demo/data-wide/eval --original-size 8 8 --n 200 --out small.json",
        ],
    )
    p.add_argument("run_dir", metavar="RUN")
    p.add_argument("--ref", required=True, metavar="DIR", help="real images (the demo data's eval split, or class sub-folders)")
    add_query_flags(p)
    p.add_argument("--n", type=SAMPLES, default=500, help="samples to draw (default 500), classes cycled over the reference labels")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--feature-steps", type=integer(1, 10_000_000, "a number of training steps"), default=300, help="training steps of the feature classifier (cached per data and recipe)")
    p.add_argument("--out", help="metrics JSON (default RUN/metrics/evaluate.json)")
    p.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from microcond.data.source import default_cache_dir
    from microcond.metrics.evaluate import evaluate, format_report, load_references
    from microcond.metrics.features import FeatureRecipe
    from microcond.sample.run import Run, palette_for, write_metrics

    model = Run(args.run_dir)
    refs = load_references(args.ref, model.size)
    labels = [i % model.cfg.num_classes for i in range(args.n)] if model.cfg.num_classes else None
    seeds = list(range(args.seed, args.seed + args.n))
    samples = model.draw(_query(args), seeds, labels, prompts=_prompts(args), steps=args.steps, scheduler=args.scheduler)
    ref_labels = refs.labels if refs.labels is not None else [0] * len(refs.images)
    report = evaluate(samples, refs.images, ref_labels, cache_dir=default_cache_dir() / "features", palette=palette_for(args.ref), recipe=FeatureRecipe(steps=args.feature_steps))
    out = Path(args.out or Path(args.run_dir) / "metrics" / "evaluate.json")
    write_metrics({"query": vars(_query(args)), **report}, out)
    print(format_report(report))
    print(f"wrote {out}")
    return 0
