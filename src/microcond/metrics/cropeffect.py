"""Paper Fig. 4 measured two ways: the cut-off rate per query and the object's position.

A wide (1:2) original resized to cover 32x32 is 32x64; a crop offset c_left in 0..32 chooses which
half of it the training image shows. The object of a real image then moves left as c_left
grows (about -0.7 px per px on the demo data). A model that learned the crop condition moves
its object the same way when asked for those offsets; a model blind to it does not move it.

Both measures use :func:`microcond.metrics.evaluate.cut_off`'s object (the largest region differing
from the background), on samples and on real crops made by the same path.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from microcond.cond.record import SIGNALS, MicroCond
from microcond.metrics.stats import rate, slope

TRAIN_SIZE = 32
WIDE = (64, 128)  # a 1:2 original: resized to 32x64, so crops can cut 32 px off its width
CROP_LEFTS = (0, 8, 16, 24, 32)  # c_left of the position sweep, every offset a 32 px crop can have
CROP_QUERIES = {
    "square original, crop (0, 0)": MicroCond((128, 128), (0, 0), (TRAIN_SIZE, TRAIN_SIZE)),
    "wide original, centre crop (0, 16)": MicroCond(WIDE, (0, 16), (TRAIN_SIZE, TRAIN_SIZE)),
    "wide original, crop (0, 0)": MicroCond(WIDE, (0, 0), (TRAIN_SIZE, TRAIN_SIZE)),
}


def real_crops(data: Path, query: MicroCond, limit: int = 2000) -> torch.Tensor:
    """Real training images whose original has the query's aspect ratio, cropped as the query says.

    This is the real-data value "for the same query": square originals taken whole, or 1:2
    originals resized to cover 32 px and cropped at the query's offset, in [-1, 1] like samples.
    """
    from microcond.data.crop import load_resized
    from microcond.data.metadata import read_metadata
    from microcond.data.pixels import stack_hwc

    records = [record for _, record in read_metadata(data)]
    want = query.original_size[1] / query.original_size[0]
    out = []
    for r in records:
        h, w = r["original_size"]
        if abs(math.log((w / h) / want)) > 0.05 or min(h, w) < 16:
            continue
        resized, _ = load_resized(data / r["file"], query.target_size)  # (H, W, 3) covering 32x32
        (top, left), (th, tw) = query.crop_top_left, query.target_size
        crop = resized[top : top + th, left : left + tw]
        if crop.shape[:2] == (th, tw):  # a rounded resize can leave a crop at the far end short
            out.append(crop)
        if len(out) >= limit:
            break
    if not out:
        raise ValueError(f"{data} holds no training image of the query's shape {query.original_size}")
    return stack_hwc(out)  # (N, 3, 32, 32)


def position_sweep(images_by_left: dict[int, torch.Tensor], palette) -> dict:
    """Mean object centre x per c_left and the slope over all images."""
    from microcond.metrics.evaluate import object_centres

    xs, ys, means = [], [], {}
    for left, images in images_by_left.items():
        centre_x = object_centres(images, palette)[:, 1]  # (N,)
        means[str(left)] = float(np.nanmean(centre_x)) if np.isfinite(centre_x).any() else float("nan")
        xs += [left] * len(centre_x)
        ys += list(centre_x)
    return {"centre_x": means, **slope(xs, ys)}


def real_effect(data: Path, palette) -> dict:
    """Cut-off rate per query and position sweep of the real training images."""
    from microcond.metrics.evaluate import cut_off

    cut = {label: rate(cut_off(real_crops(data, q), palette)) for label, q in CROP_QUERIES.items()}
    sweep = {left: real_crops(data, MicroCond(WIDE, (0, left), (TRAIN_SIZE, TRAIN_SIZE))) for left in CROP_LEFTS}
    return {"cutoff": cut, "position": position_sweep(sweep, palette)}


def model_effect(model, n: int, palette, *, steps: int = 50, n_classes: int = 9, seed0: int = 10_000, guidance: float = 1.0,
                 micro_guidance: float | None = None, progress: bool = True) -> dict:
    """Cut-off rate per query and position sweep of a model's samples (``n`` per query / offset).

    Every query and offset uses the same seeds and classes, so differences come from the
    conditions alone; a model that does not see a signal is asked once and reused.
    """
    import torch

    from microcond.metrics.evaluate import cut_off
    from microcond.sample.run import Query

    seen = [i for i, signal in enumerate(SIGNALS) if signal in model.cfg.signals]
    cache: dict[tuple, torch.Tensor] = {}

    def draw(micro: MicroCond) -> torch.Tensor:
        key = tuple(v for i in seen for v in micro.ids[2 * i : 2 * i + 2])  # the ids this model can see
        if key not in cache:
            query = Query(original_size=micro.original_size, crop_top_left=micro.crop_top_left, target_size=micro.target_size, guidance=guidance,
                          micro_guidance=micro_guidance)
            cache[key] = model.draw(query, list(range(seed0, seed0 + n)), [i % n_classes for i in range(n)], steps=steps, progress=progress)
        return cache[key]

    cut = {label: rate(cut_off(draw(q), palette)) for label, q in CROP_QUERIES.items()}
    sweep = {left: draw(MicroCond(WIDE, (0, left), (TRAIN_SIZE, TRAIN_SIZE))) for left in CROP_LEFTS}
    return {"cutoff": cut, "position": position_sweep(sweep, palette)}
