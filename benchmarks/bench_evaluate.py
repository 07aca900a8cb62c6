"""Cost of the in-domain metrics on 32 px images, with same-run baselines.

- largest_component: the batch-vectorised label propagation against a plain per-image
  breadth-first search in Python (the obvious scipy-free alternative).
- cut_off, sharpness, sliced_wasserstein, frechet+kid: N samples against N references.
- feature_net training (once, the default recipe; it is cached afterwards), against
  extracting the features of the references with the trained network.

Prints one JSON line per result (median of ``--repeats``, seconds and images/s, peak RSS).
Default: 1,000 images, about a minute on 2 idle cores.

    .venv/bin/python benchmarks/bench_evaluate.py
    .venv/bin/python benchmarks/bench_evaluate.py --n 5000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from collections import deque

import numpy as np
import torch
from common import timed

from microcond.metrics.evaluate import (
    border_background,
    cut_off,
    frechet_distance,
    kernel_inception_distance,
    largest_component,
    object_masks,
    sharpness,
    sliced_wasserstein,
)
from microcond.metrics.features import FeatureRecipe, extract_features, feature_net

PALETTE = [(222, 212, 246), (200, 236, 214), (40, 110, 120)]


def scenes(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Discs and squares of random colour on palette backgrounds, some crossing the border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    cy, cx = rng.uniform(0.2, 0.8, (2, n, 1, 1)) * size
    radius = rng.uniform(0.15, 0.3, (n, 1, 1)) * size
    labels = rng.integers(0, 2, n)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    square = (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
    inside = np.where(labels[:, None, None] == 0, disc, square)  # (n, H, W)
    bg = np.asarray(PALETTE, dtype=np.float64)[rng.integers(0, len(PALETTE), n)] / 255  # (n, 3)
    fg = rng.uniform(0, 1, (n, 3))
    img = np.where(inside[..., None], fg[:, None, None], bg[:, None, None]) + rng.normal(0, 0.02, (n, size, size, 3))
    return torch.tensor(np.clip(img, 0, 1) * 2 - 1, dtype=torch.float32).permute(0, 3, 1, 2), torch.tensor(labels)


def bfs_largest_component(masks: np.ndarray) -> np.ndarray:
    """Baseline: per-image breadth-first search over 8-neighbours, in Python."""
    out = np.zeros_like(masks)
    n, h, w = masks.shape
    for i in range(n):
        seen = np.zeros((h, w), dtype=bool)
        best: list[tuple[int, int]] = []
        for y0, x0 in zip(*np.nonzero(masks[i])):
            if seen[y0, x0]:
                continue
            seen[y0, x0] = True
            queue, comp = deque([(y0, x0)]), []
            while queue:
                y, x = queue.popleft()
                comp.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and masks[i, yy, xx] and not seen[yy, xx]:
                            seen[yy, xx] = True
                            queue.append((yy, xx))
            if len(comp) > len(best):
                best = comp
        for y, x in best:
            out[i, y, x] = True
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="samples and references each (default 1000)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {"device": "cpu", "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}

    def emit(name: str, seconds: float, images: int, **extra) -> None:
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"bench": name, "median_s": round(seconds, 4), "images_per_s": round(images / seconds, 1),
                          "n": images, "peak_rss_mb": round(rss_mb, 1), **extra, **env}), flush=True)

    samples, _ = scenes(args.n, seed=1)
    refs, labels = scenes(args.n, seed=0)
    masks = object_masks(samples, border_background(samples, PALETTE))
    subset = masks[: min(200, args.n)]
    assert np.array_equal(largest_component(subset), bfs_largest_component(subset))
    emit("largest_component_vectorised", timed(lambda: largest_component(masks), args.repeats), len(masks))
    emit("largest_component_baseline_python_bfs", timed(lambda: bfs_largest_component(subset), 1), len(subset))
    emit("cut_off", timed(lambda: cut_off(samples, PALETTE), args.repeats), args.n)
    emit("sharpness", timed(lambda: sharpness(samples, refs), args.repeats), 2 * args.n)
    emit("sliced_wasserstein", timed(lambda: sliced_wasserstein(samples, refs), args.repeats), 2 * args.n)

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        net = feature_net(refs, labels, cache, FeatureRecipe(), progress=False)
        emit("feature_net_training_default_recipe", time.perf_counter() - start, args.n, steps=FeatureRecipe().steps)
        emit("feature_net_cached_load", timed(lambda: feature_net(refs, labels, cache, progress=False), args.repeats), args.n)
        emit("extract_features", timed(lambda: extract_features(net, refs), args.repeats), args.n)
        fs, fr = extract_features(net, samples), extract_features(net, refs)
        emit("frechet_distance+kid", timed(lambda: (frechet_distance(fs, fr), kernel_inception_distance(fs, fr)), args.repeats), 2 * args.n)


if __name__ == "__main__":
    main()
