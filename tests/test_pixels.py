"""uint8 <-> [-1, 1]: one conversion each way, exact on the round trip."""

from __future__ import annotations

import numpy as np
import torch

from microcond.data.pixels import stack_hwc, to_model, to_uint8


def test_round_trip_is_exact_and_the_range_is_minus_one_to_one():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    unit = to_model(pixels)
    assert unit.dtype == torch.float32 and unit.min() == -1 and unit.max() == 1
    assert torch.equal(to_uint8(unit), pixels)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 2.0, 0.0])), torch.tensor([0, 255, 128], dtype=torch.uint8))


def test_stack_hwc_is_channels_first():
    a = np.zeros((4, 5, 3), np.uint8)
    a[..., 1] = 255
    batch = stack_hwc([a, a])
    assert batch.shape == (2, 3, 4, 5) and torch.equal(batch[:, 1], torch.ones(2, 4, 5)) and torch.equal(batch[:, 0], -torch.ones(2, 4, 5))
