"""``microcond probe``: the paper's micro-conditioning sweeps, measured on any SDXL-architecture folder.

Two sweeps, sampled with :class:`microcond.sample.pipeline.MicroCondXLPipeline` from fixed prompts and
seeds. Every image of a row has one prompt and one seed's initial noise (drawn on the CPU, so the
same on any device) for every value, so what changes along a row is the micro-condition alone.

Size (paper Fig. 3): c_size square, from small to large multiples of the resolution, c_crop
(0, 0), c_ar the output size. Each image's sharpness is the project's focus measure, the
Laplacian variance (:func:`microcond.metrics.evaluate.laplacian_variance`); the report gives its mean
with a 95% interval per size and Spearman's rank correlation of size and sharpness.

Crop (paper Fig. 4 and 5): c_crop from (0, 0) to offsets along each axis, c_size fixed. A
general checkpoint draws any background, so the demo's colour-based cut-off detector cannot find
its objects; :mod:`microcond.metrics.objects` finds them where the detail is. Per query the report gives
the cut-off rate, the sides the objects touch and the object centre. A crop from the left moves
the content left, so a model that follows c_crop moves the centre left as c_left grows: the
report gives that slope in px per px of requested crop (:func:`microcond.metrics.stats.slope`, the
project's Fig. 4 measure), and each query's shift from the first query, image by image.

The module imports torch and diffusers only when it samples, so the command line starts without
them (as the settings of ``demo`` and ``experiment`` do).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from microcond.base.files import atomic_write_text
from microcond.cond.record import MicroCond
from microcond.metrics.stats import slope
from microcond.metrics.stats import mean_interval, rate, spearman

if TYPE_CHECKING:
    import torch

    from microcond.sample.pipeline import MicroCondXLPipeline

DEFAULT_PROMPTS = (
    "a studio photo of a red apple on a plain white background",
    "a product photo of a ceramic teapot on a plain grey background",
    "a photo of a golden retriever sitting, plain studio background",
    "a vintage bicycle, side view, on a plain white background",
    "a potted cactus on a plain beige background, studio photo",
    "a product photo of a running shoe on a plain white background",
    "a red sports car, side view, plain studio background",
    "a wooden chair on a plain light grey background, studio photo",
)
SIZE_FACTORS = (0.125, 0.25, 0.5, 1.0, 2.0)  # c_size short side / resolution, as in the paper's Fig. 3
CROP_FRACTIONS = ((0.0, 0.0), (0.0, 0.125), (0.0, 0.25), (0.25, 0.0), (0.25, 0.25))  # c_crop (top, left) / resolution
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # flag -> torch dtype name
THUMBNAIL_PX = 256  # grid cells; the measures use the full-resolution images
MIN_RESOLUTION = 32  # microcond.metrics.objects.DETAIL_GRID cells need a pixel each


@dataclass(frozen=True)
class ProbeSettings:
    """What ``microcond probe`` samples and how; one field per flag. ``None`` fields are resolved
    from the model and the machine by :func:`resolve`."""

    model: str
    out: str
    resolution: int | None = None  # output side in px; default the UNet's sample_size x the VAE's scale factor
    steps: int = 30
    guidance: float = 5.0
    seeds: tuple[int, ...] = (0, 1)
    prompts: str | None = None  # a file, one prompt per line; default DEFAULT_PROMPTS
    n_prompts: int | None = None  # the first N prompts; default all
    sizes: tuple[float, ...] = SIZE_FACTORS
    crops: tuple[tuple[float, float], ...] = CROP_FRACTIONS
    crop_original_size: tuple[int, int] | None = None  # c_size of the crop sweep; default the output size
    negative_micro: str = "default"  # "null": the unconditional branch gets the zero micro-condition embedding
    batch_size: int = 4  # images per pipeline call (and per VAE decode)
    device: str | None = None  # default cuda when available
    dtype: str | None = None  # default bf16 on cuda, fp32 on cpu
    lora: str = ""  # a LoRA file (`microcond export RUN --lora`, or any diffusers SDXL LoRA) loaded onto MODEL


def _config(folder: Path, part: str) -> dict:
    path = folder / part / "config.json"
    if not path.is_file():
        raise ValueError(f"MODEL {str(folder)!r} has no {part}/config.json: expected a diffusers SDXL pipeline folder "
                         "(model_index.json, unet/, vae/, text encoders, tokenizers, scheduler/)")
    return json.loads(path.read_text())


def model_geometry(model: str) -> tuple[int, int]:
    """(default resolution, the multiple every resolution must be) from the folder's configs alone;
    ``ValueError`` unless ``model`` is a pipeline folder with SDXL base's micro-conditioned UNet."""
    folder = Path(model)
    if not (folder / "model_index.json").is_file():
        found = "it is not a folder" if not folder.is_dir() else "it has no model_index.json"
        raise ValueError(f"MODEL {model!r} must be a diffusers SDXL pipeline folder on disk, as `microcond export "
                         f"--pipeline` writes or a stock SDXL checkpoint folder; {found}")
    unet, vae = _config(folder, "unet"), _config(folder, "vae")
    if unet.get("addition_embed_type") != "text_time":
        raise ValueError(f"MODEL {model!r}: its UNet has addition_embed_type={unet.get('addition_embed_type')!r}; "
                         "micro-conditions need an SDXL-architecture UNet ('text_time')")
    pooled, features, dim = _config(folder, "text_encoder_2")["projection_dim"], unet["projection_class_embeddings_input_dim"], unet["addition_time_embed_dim"]
    if features != pooled + 6 * dim:
        raise ValueError(f"MODEL {model!r}: its UNet's add_embedding takes {features} features, not {pooled} pooled + 6 ids x {dim}; "
                         "expected SDXL base's six micro-condition ids (the refiner's five are not probed)")
    vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return unet["sample_size"] * vae_factor, vae_factor * 2 ** (len(unet["block_out_channels"]) - 1)  # each UNet block but the last halves


def resolve(settings: ProbeSettings) -> ProbeSettings:
    """Check the settings and the model folder (configs only, no weights); fill in the defaults."""
    default_resolution, multiple = model_geometry(settings.model)
    resolution = settings.resolution or default_resolution
    if resolution < MIN_RESOLUTION or resolution % multiple:
        raise ValueError(f"--resolution must be a multiple of {multiple} (VAE and UNet downsampling) and at least {MIN_RESOLUTION}, got {resolution}")
    if bad := [f"{flag} {v}" for flag, v in (("--steps", settings.steps), ("--batch-size", settings.batch_size),
                                              ("--n-prompts", settings.n_prompts)) if v is not None and v < 1]:
        raise ValueError(f"expected positive integers, got {', '.join(bad)}")
    if not (math.isfinite(settings.guidance) and settings.guidance >= 0):
        raise ValueError(f"--guidance must be a finite number >= 0 (1 or less = no guidance), got {settings.guidance}")
    if not settings.seeds or not settings.sizes or not settings.crops:
        raise ValueError("--seeds, --sizes and --crops each need at least one value")
    if min(settings.sizes) <= 0 or min(min(c) for c in settings.crops) < 0:
        raise ValueError(f"--sizes must be > 0 and --crops >= 0 (fractions of the resolution), got {settings.sizes} and {settings.crops}")
    if settings.crop_original_size is not None and min(settings.crop_original_size) < 1:
        raise ValueError(f"--crop-original-size must be a positive height and width in px, got {settings.crop_original_size}")
    if settings.negative_micro not in ("default", "null"):
        raise ValueError(f"--negative-micro must be default or null, got {settings.negative_micro!r}")
    import torch

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"--device {device}: expected cpu, or cuda with a visible GPU ({torch.cuda.device_count()} visible)")
    dtype = settings.dtype or ("bf16" if device == "cuda" else "fp32")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if settings.lora and not (Path(settings.lora).is_file() and settings.lora.endswith(".safetensors")):
        raise ValueError(f"--lora {settings.lora!r} must be a .safetensors LoRA file on disk (microcond export RUN --lora FILE writes one)")
    resolved = replace(settings, resolution=resolution, device=device, dtype=dtype)
    probe_prompts(resolved)  # a missing or short prompt file fails here, before any weights load
    return resolved


def probe_prompts(settings: ProbeSettings) -> list[str]:
    """The prompts of the rows: the file's non-empty lines (or the built-in ones), the first ``n_prompts``."""
    prompts = list(DEFAULT_PROMPTS)
    if settings.prompts:
        from microcond.sdxl.text import read_prompts

        prompts = read_prompts(settings.prompts)
    n = settings.n_prompts or len(prompts)
    if not prompts or n > len(prompts):
        raise ValueError(f"--n-prompts {n} but {settings.prompts or 'the built-in list'} holds {len(prompts)} prompts")
    return prompts[:n]


def size_measures(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image: the Laplacian variance (the project's sharpness) and the high-frequency energy share."""
    from microcond.metrics.evaluate import high_frequency_energy, laplacian_variance

    return {"laplacian_variance": laplacian_variance(images).numpy(), "high_frequency_energy": high_frequency_energy(images).numpy()}


# ----------------------------------------------------------------------------------- sampling


def load_pipeline(settings: ProbeSettings) -> MicroCondXLPipeline:
    """The folder as a :class:`MicroCondXLPipeline` on the settings' device, safetensors only."""
    import torch

    from microcond.sample.pipeline import MicroCondXLPipeline

    with warnings.catch_warnings():  # diffusers 0.42 renames torch_dtype; the old name loads on every version we support
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = MicroCondXLPipeline.from_pretrained(settings.model, local_files_only=True, use_safetensors=True,
                                                   torch_dtype=getattr(torch, DTYPES[settings.dtype]))
    pipe.set_progress_bar_config(disable=True)  # the probe's own bar counts images
    if settings.lora:
        pipe.load_lora_weights(settings.lora)
    return pipe.to(settings.device)


def draw(pipe: MicroCondXLPipeline, rows: list[tuple[str, int]], micro: MicroCond, settings: ProbeSettings) -> torch.Tensor:
    """(len(rows), 3, H, W) float32 CPU images in [-1, 1]: row ``(prompt, seed)`` with ``micro``.

    Each seed's generator lives on the CPU, so a row starts from the same noise on any device.
    """
    import torch

    out = pipe(prompt=[prompt for prompt, _ in rows], height=settings.resolution, width=settings.resolution,
               num_inference_steps=settings.steps, guidance_scale=settings.guidance,
               generator=[torch.Generator().manual_seed(seed) for _, seed in rows],
               original_size=micro.original_size, crops_coords_top_left=micro.crop_top_left, target_size=micro.target_size,
               negative_micro_condition="null" if settings.negative_micro == "null" else None, output_type="pt")
    return out.images.float().cpu() * 2 - 1  # (b, 3, H, W): the pipeline gives [0, 1]


def run_sweep(pipe: MicroCondXLPipeline, settings: ProbeSettings, rows: list[tuple[str, int]], micros: list[MicroCond],
              measure: Callable[[torch.Tensor], dict[str, np.ndarray]], name: str, progress: bool) -> tuple[dict[str, np.ndarray], torch.Tensor, float]:
    """Sample every row with every micro-condition and measure each batch as it comes.

    Returns each measure as (rows, values), the grid's thumbnails (rows * values, 3, t, t) in
    row-major order, and the seconds spent. Only the thumbnails outlive a batch.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    side = min(settings.resolution, THUMBNAIL_PX)
    thumbnails = torch.empty(len(rows), len(micros), 3, side, side)
    values: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    with tqdm(total=len(rows) * len(micros), desc=f"probe {name}", unit="img", disable=not progress) as bar:
        for j, micro in enumerate(micros):
            for first in range(0, len(rows), settings.batch_size):
                batch = rows[first : first + settings.batch_size]
                images = draw(pipe, batch, micro, settings)  # (b, 3, H, W)
                for key, v in measure(images).items():
                    values.setdefault(key, np.full((len(rows), len(micros)), np.nan))[first : first + len(batch), j] = v
                thumbnails[first : first + len(batch), j] = F.interpolate(images, size=(side, side), mode="area")
                del images
                bar.update(len(batch))
    return values, thumbnails.flatten(0, 1), time.perf_counter() - start


# -------------------------------------------------------------------------------- summaries


def size_summary(sizes: list[int], m: dict[str, np.ndarray]) -> dict:
    """Fig. 3 in numbers: the curve, Spearman over all images and within rows (paired: one prompt
    and seed per row), and the mean sharpness at the largest c_size over that at the smallest."""
    sharp = m["laplacian_variance"]  # (rows, values)
    curve = [{"original_size": [s, s], "laplacian_variance": mean_interval(sharp[:, j]),
              "high_frequency_energy": mean_interval(m["high_frequency_energy"][:, j])} for j, s in enumerate(sizes)]
    means = [c["laplacian_variance"]["mean"] for c in curve]
    within = mean_interval([spearman(sizes, row) for row in sharp])
    within.update({k: min(1.0, max(-1.0, within[k])) for k in ("low", "high") if math.isfinite(within[k])})  # a correlation's bounds
    smallest, largest = means[int(np.argmin(sizes))], means[int(np.argmax(sizes))]
    return {"curve": curve, "spearman": spearman(np.broadcast_to(sizes, sharp.shape).ravel(), sharp.ravel()),
            "spearman_within_rows": within, "spearman_of_means": spearman(sizes, means),
            "ratio_largest_to_smallest": largest / smallest if smallest > 0 else float("nan"),
            "per_image": {k: v.tolist() for k, v in m.items()}}


def crop_summary(crops: list[tuple[int, int]], m: dict[str, np.ndarray]) -> dict:
    """Fig. 4/5 in numbers: per query the cut-off rate, the sides touched, the object centre and
    its shift from query 0 (image by image); the centre's slope against each crop offset."""
    cy, cx = m["centre_y"], m["centre_x"]  # (rows, values), px
    sides = [k for k in m if k.startswith("touches_")]
    queries = []
    for j, crop in enumerate(crops):
        queries.append({"crop_top_left": list(crop), "cut_off": rate(m["cut_off"][:, j]),
                        "touches": {k.removeprefix("touches_"): float(m[k][:, j].mean()) for k in sides},
                        "centre": {"y": mean_interval(cy[:, j]), "x": mean_interval(cx[:, j])},
                        "shift": {"y": mean_interval(cy[:, j] - cy[:, 0]), "x": mean_interval(cx[:, j] - cx[:, 0])}})

    def axis_slope(axis: int, centres: np.ndarray) -> dict:
        """Centre against the crop offset along ``axis``, over the queries that crop along that axis alone."""
        cols = [j for j, crop in enumerate(crops) if crop[1 - axis] == 0]
        return slope([crops[j][axis] for j in cols for _ in range(len(centres))], centres[:, cols].T.ravel())

    return {"queries": queries, "slope_x_per_crop_left": axis_slope(1, cx), "slope_y_per_crop_top": axis_slope(0, cy),
            "per_image": {k: v.tolist() for k, v in m.items()}}


def _strict(value):
    """JSON-safe copy: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def run_probe(settings: ProbeSettings, progress: bool = True) -> dict:
    """Both sweeps on ``settings.model``: grids, ``probe.json`` and ``probe.md`` in ``settings.out``; returns probe.json's content."""
    import diffusers
    import torch

    from microcond.metrics.objects import object_measures
    from microcond.probe.page import write_probe_page
    from microcond.sample.grid import save_grid

    settings = resolve(settings)
    prompts, out, r = probe_prompts(settings), Path(settings.out), settings.resolution
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pipe = load_pipeline(settings)
    load_s = time.perf_counter() - start
    rows = [(prompt, seed) for prompt in prompts for seed in settings.seeds]
    row_labels = [f"P{i + 1} seed {seed}" for i in range(len(prompts)) for seed in settings.seeds]
    target = (r, r)

    sizes = [max(1, round(f * r)) for f in settings.sizes]
    measured, thumbs, size_s = run_sweep(pipe, settings, rows, [MicroCond((s, s), (0, 0), target) for s in sizes], size_measures, "c_size", progress)
    size = {"crop_top_left": [0, 0], "target_size": list(target), "grid": "size-sweep.png", **size_summary(sizes, measured)}
    save_grid(thumbs, out / size["grid"], nrow=len(sizes), row_labels=row_labels, col_labels=[f"c_size {s}" for s in sizes],
              title=f"c_size sweep (paper Fig. 3): c_crop (0, 0), c_ar {r}x{r}")

    crops = [(round(top * r), round(left * r)) for top, left in settings.crops]
    original = tuple(settings.crop_original_size or target)
    measured, thumbs, crop_s = run_sweep(pipe, settings, rows, [MicroCond(original, c, target) for c in crops], object_measures, "c_crop", progress)
    crop = {"original_size": list(original), "target_size": list(target), "grid": "crop-sweep.png", **crop_summary(crops, measured)}
    save_grid(thumbs, out / crop["grid"], nrow=len(crops), row_labels=row_labels, col_labels=[f"({t}, {left})" for t, left in crops],
              title=f"c_crop (top, left) sweep (paper Fig. 4/5): c_size {original[0]}x{original[1]}, c_ar {r}x{r}")
    del pipe, thumbs

    images = len(rows) * (len(sizes) + len(crops))
    device = torch.cuda.get_device_name() if settings.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    results = {
        "model": str(Path(settings.model).resolve()), "settings": asdict(settings), "prompts": prompts,
        "rows": [{"prompt": i, "seed": seed} for i in range(len(prompts)) for seed in settings.seeds],  # the order of `rows`
        "environment": {"device": device, "torch": torch.__version__, "diffusers": diffusers.__version__},
        "size_sweep": size, "crop_sweep": crop,
        "timing": {"load_s": load_s, "size_sweep_s": size_s, "crop_sweep_s": crop_s, "sampling_s": size_s + crop_s,
                   "total_s": time.perf_counter() - start, "images": images, "images_per_s": images / (size_s + crop_s),
                   "seconds_per_image": (size_s + crop_s) / images},
    }
    results = _strict(results)
    atomic_write_text((out / "probe.json"), json.dumps(results, indent=2, allow_nan=False) + "\n")
    write_probe_page(results, out / "probe.md")
    return results
