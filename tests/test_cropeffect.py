"""Fig. 4 measures: object centres, the position slope, real crops and the detector's floor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from microcond.demodata.build import PALETTE, DemoDataConfig, build_demo_data
from microcond.experiments.paper import detector_floor
from microcond.metrics.cropeffect import CROP_QUERIES, real_crops, real_effect
from microcond.metrics.stats import slope
from microcond.metrics.evaluate import cut_off, object_centres


def _square(top: int, left: int, side: int = 8, size: int = 32) -> torch.Tensor:
    image = torch.full((3, size, size), 0.0)
    image[:] = torch.tensor(PALETTE[0]).view(3, 1, 1) / 127.5 - 1
    image[0, top : top + side, left : left + side] = 1.0
    image[1:, top : top + side, left : left + side] = -1.0
    return image


def test_object_centres_are_the_mask_centroid_and_nan_without_object() -> None:
    images = torch.stack([_square(4, 10), _square(20, 0), torch.full((3, 32, 32), 0.0) + torch.tensor(PALETTE[0]).view(3, 1, 1) / 127.5 - 1])
    centres = object_centres(images, PALETTE)
    assert np.allclose(centres[0], [8.0, 14.0]) and np.allclose(centres[1], [24.0, 4.0])
    assert np.isnan(centres[2]).all()


def test_slope_recovers_a_known_line_and_its_interval_covers_it() -> None:
    rng = np.random.default_rng(0)
    x = np.repeat([0, 8, 16, 24, 32], 200)
    y = 27.0 - 0.7 * x + rng.normal(0, 2.0, len(x))
    fit = slope(x, np.append(y[:-1], np.nan))  # a sample without object is left out
    assert fit["low"] < -0.7 < fit["high"] and fit["high"] - fit["low"] < 0.05 and fit["n"] == len(x) - 1
    flat = slope(x, 15.0 + rng.normal(0, 2.0, len(x)))
    assert flat["low"] < 0 < flat["high"]


@pytest.fixture(scope="module")
def extreme(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    build_demo_data(DemoDataConfig(out=str(root), n_train=500, n_eval=20, jobs=2, aspect_mix="extreme", preview=False), progress=False)
    return root / "train"


def test_extreme_mix_has_only_square_and_two_to_one_originals(extreme) -> None:
    records = [json.loads(line) for line in (extreme / "metadata.jsonl").read_text().splitlines()]
    ratios = np.array([max(r["original_size"]) / min(r["original_size"]) for r in records])
    square = ratios < 1.2
    assert 0.15 < square.mean() < 0.35  # square_share 0.25
    assert np.all(np.abs(ratios[~square & (np.array([min(r["original_size"]) for r in records]) >= 16)] - 2.0) < 0.1)


def test_wide_mix_makes_every_non_square_original_landscape(tmp_path) -> None:
    root = tmp_path / "data"
    build_demo_data(DemoDataConfig(out=str(root), n_train=200, n_eval=10, jobs=1, aspect_mix="wide", preview=False), progress=False)
    sizes = np.array([json.loads(line)["original_size"] for line in (root / "train" / "metadata.jsonl").read_text().splitlines()])  # (N, 2) h, w
    square = sizes[:, 1] < 1.2 * sizes[:, 0]
    assert 0.15 < square.mean() < 0.35
    assert np.all(sizes[~square, 1] > 1.8 * sizes[~square, 0])  # 2:1, width first: no tall originals


def test_real_objects_move_left_as_the_crop_moves_right(extreme) -> None:
    effect = real_effect(extreme, PALETTE)
    position = effect["position"]
    assert -0.9 < position["low"] <= position["slope"] <= position["high"] < -0.5  # about -0.7 px per px
    cut = {k: v["rate"] for k, v in effect["cutoff"].items()}
    assert cut["square original, crop (0, 0)"] <= 0.05
    assert cut["wide original, crop (0, 0)"] - cut["wide original, centre crop (0, 16)"] >= 0.3


def test_detector_floor_on_real_images_made_like_samples(extreme) -> None:
    # Real uncropped images at 32 px in [-1, 1] with noise must not read as cut off.
    floor = detector_floor(extreme, PALETTE, noise=0.05)
    assert floor["n"] >= 50 and floor["rate"] <= 0.05
    square = real_crops(extreme, CROP_QUERIES["square original, crop (0, 0)"])
    assert square.shape[1:] == (3, 32, 32) and square.min() >= -1 and square.max() <= 1
    assert cut_off(square, PALETTE).mean() <= 0.05
