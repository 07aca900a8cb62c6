"""The ``probe`` command: the paper's micro-conditioning sweeps on any SDXL-architecture folder."""

from __future__ import annotations

import argparse

from microcond.cli.common import COUNT, SCALE, SEED, SIZE, integer, number, subparser


def _fractions(text: str) -> tuple[float, float]:
    """'TOP,LEFT' as fractions of the resolution, e.g. '0,0.25'."""
    parts = text.split(",")
    try:
        if len(parts) == 2 and all(0 <= float(v) < 1 for v in parts):
            return float(parts[0]), float(parts[1])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected TOP,LEFT as two fractions of the resolution in [0, 1) like 0,0.25, got {text!r}")


def add_probe(sub: argparse._SubParsersAction) -> None:
    from microcond.probe.sweeps import CROP_FRACTIONS, SIZE_FACTORS, ProbeSettings

    defaults = ProbeSettings(model="", out="")
    p = subparser(
        sub,
        "probe",
        "Measure how an SDXL-architecture checkpoint follows its micro-conditions, with fixed prompts and seeds: sharpness "
        "against the requested original size (paper Fig. 3) and cut-off rate and object position against the requested crop "
        "(Fig. 4 and 5). Writes DIR/probe.md, DIR/probe.json and a grid per sweep.",
        [
            "microcond probe /models/sdxl-base --out probes/sdxl-base   # GPU: 160 images at 1024 px",
            "microcond probe out/sdxl-ft --out probes/ft --n-prompts 4 --seeds 0 1 2 3",
            "microcond probe out/sdxl-ft --out probes/ft-null --negative-micro null --prompts prompts.txt",
            "microcond probe tiny-sdxl --out probes/tiny --resolution 64 --steps 3 --n-prompts 2 --seeds 0 --device cpu",
            "microcond probe /models/sdxl-base --lora out/lora.safetensors --out probes/lora",
        ],
    )
    p.add_argument("model", metavar="MODEL", help="a diffusers SDXL pipeline folder on disk (model_index.json): "
                   "`microcond export --pipeline` output or a stock SDXL checkpoint")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for probe.md, probe.json, size-sweep.png, crop-sweep.png")
    p.add_argument("--resolution", type=integer(8, 16384, "a side in px"), metavar="PX", help="output side in px (default: the UNet's sample_size x the VAE's scale factor, 1024 for SDXL)")
    p.add_argument("--steps", type=integer(1, 10_000, "a number of sampler steps"), metavar="N", help=f"sampler steps (default {defaults.steps})")
    p.add_argument("--guidance", type=SCALE, metavar="SCALE", help=f"classifier-free guidance scale (default {defaults.guidance})")
    p.add_argument("--seeds", type=SEED, nargs="+", metavar="SEED", help=f"seeds of each prompt's rows (default {' '.join(map(str, defaults.seeds))})")
    p.add_argument("--prompts", metavar="FILE", help="prompts, one per line (default: 8 built-in object-centred prompts on plain backgrounds)")
    p.add_argument("--n-prompts", type=COUNT, metavar="N", help="use the first N prompts (default all)")
    p.add_argument("--sizes", type=number(0.01, 100.0, "a size factor"), nargs="+", metavar="FACTOR",
                   help=f"c_size short sides as multiples of the resolution (default {' '.join(map(str, SIZE_FACTORS))})")
    p.add_argument("--crops", type=_fractions, nargs="+", metavar="TOP,LEFT", help="c_crop values as fractions of the resolution "
                   f"(default {' '.join(f'{t:g},{left:g}' for t, left in CROP_FRACTIONS)}); the first is the reference of the shifts")
    p.add_argument("--crop-original-size", type=SIZE, nargs=2, metavar=("H", "W"), help="c_size of the crop sweep (default: the output size)")
    p.add_argument("--negative-micro", choices=("default", "null"),
                   help="the unconditional branch's micro-conditions: default = the same as the conditional one (the paper's "
                        "inference), null = the zero embedding of a dropped condition (default: default)")
    p.add_argument("--batch-size", type=integer(1, 65536, "a batch size"), metavar="N", help=f"images per pipeline call and VAE decode (default {defaults.batch_size})")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default cuda when a GPU is visible")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="weights and activations (default bf16 on cuda, fp32 on cpu)")
    p.add_argument("--lora", metavar="FILE", help="a LoRA file to load onto MODEL first (`microcond export RUN --lora FILE`, "
                   "or any diffusers SDXL LoRA): probe a LoRA run on its base checkpoint")
    p.add_argument("--dry-run", action="store_true", help="check MODEL and print the resolved settings without loading weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run_probe_command)


def run_probe_command(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict, fields
    from pathlib import Path

    from microcond.probe.page import reading
    from microcond.probe.sweeps import ProbeSettings, resolve, run_probe

    given = {f.name: getattr(args, f.name) for f in fields(ProbeSettings) if getattr(args, f.name, None) is not None}
    for name in ("seeds", "sizes", "crops", "crop_original_size"):
        if name in given:
            given[name] = tuple(given[name])
    settings = resolve(ProbeSettings(**given))
    if args.dry_run:
        print(json.dumps(asdict(settings), indent=2))
        return 0
    results = run_probe(settings, progress=not args.no_progress)
    t = results["timing"]
    print("\n".join(reading(results)))
    print(f"probe: {t['images']} images in {t['sampling_s']:.1f} s ({t['images_per_s']:.3g} images/s, {t['seconds_per_image']:.3g} s per image; "
          f"{t['total_s']:.1f} s with loading); wrote {Path(settings.out) / 'probe.md'} and probe.json")
    return 0
