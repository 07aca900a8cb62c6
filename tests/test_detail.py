"""The detail-map object on synthetic discs, where the centre and the cut-off are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from microcond.metrics.objects import DETAIL_GRID, detail_map, object_measures

SIZE = 64  # 2 px per detail cell


def discs(centres: list[tuple[float, float]], radius: float = 10.0, size: int = SIZE, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """(N, 3, size, size) in [-1, 1]: a dark red disc per (y, x) centre on a light grey background,
    plus Gaussian pixel noise of std ``noise``."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    rng = np.random.default_rng(seed)
    images = []
    for cy, cx in centres:
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        rgb = np.where(inside[..., None], [0.6, 0.1, 0.1], [0.85, 0.85, 0.85]) + rng.normal(0, noise, (size, size, 3))
        images.append(np.clip(rgb, 0, 1) * 2 - 1)
    return torch.tensor(np.stack(images), dtype=torch.float32).permute(0, 3, 1, 2)


def test_centre_is_the_disc_centre_and_follows_a_known_shift():
    m = object_measures(discs([(32, 32), (32, 24), (20, 32)]))
    assert m["centre_y"][0] == pytest.approx(32, abs=0.5) and m["centre_x"][0] == pytest.approx(32, abs=0.5)
    # Shifts of whole cells move the detail map by whole cells: the centre moves by the shift exactly.
    assert m["centre_x"][1] - m["centre_x"][0] == pytest.approx(-8, abs=1e-3)
    assert m["centre_y"][1] == pytest.approx(m["centre_y"][0], abs=1e-3)
    assert m["centre_y"][2] - m["centre_y"][0] == pytest.approx(-12, abs=1e-3)


def test_a_disc_over_the_border_is_cut_off_on_that_side_only():
    m = object_measures(discs([(32, 32), (32, 4), (60, 32)]))
    assert m["cut_off"].tolist() == [False, True, True]
    assert [m[f"touches_{s}"][1] for s in ("top", "left", "bottom", "right")] == [False, True, False, False]
    assert [m[f"touches_{s}"][2] for s in ("top", "left", "bottom", "right")] == [False, False, True, False]
    assert m["centre_x"][1] < 10  # the visible part of the disc, left of its inner half


def test_pixel_noise_in_the_background_is_not_the_object():
    # The noise covers the whole border; the threshold (4x the border's lower quartile) sits above it.
    m = object_measures(discs([(32, 32), (32, 4)], noise=0.02, seed=1))
    assert m["cut_off"].tolist() == [False, True]
    assert m["centre_x"][0] == pytest.approx(32, abs=1.5)


def test_a_flat_image_has_no_object():
    m = object_measures(torch.zeros(2, 3, SIZE, SIZE))
    assert not m["cut_off"].any()
    assert all(math.isnan(v) for v in m["centre_x"])


def test_the_map_has_the_same_cells_at_any_resolution():
    small, large = discs([(32, 32)]), discs([(64, 64)], radius=20.0, size=128)
    assert detail_map(small).shape == detail_map(large).shape == (1, DETAIL_GRID, DETAIL_GRID)
    centres = object_measures(small), object_measures(large)
    assert centres[1]["centre_x"][0] / 128 == pytest.approx(centres[0]["centre_x"][0] / 64, abs=0.01)
    with pytest.raises(ValueError, match="at least 32 px"):
        detail_map(torch.zeros(1, 3, 16, 16))
