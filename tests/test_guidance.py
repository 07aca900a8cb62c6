"""combine_guidance: plain guidance as diffusers computes it, and the micro-condition form's identities."""

from __future__ import annotations

import pytest
import torch

from microcond.cond.guidance import combine_guidance


def branches(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))


def test_plain_guidance_is_diffusers_arithmetic_bit_for_bit():
    uncond, cond, _ = branches()
    assert torch.equal(combine_guidance(uncond, cond, 7.5), uncond + 7.5 * (cond - uncond))
    assert torch.equal(combine_guidance(uncond, cond, 1.0), uncond + 1.0 * (cond - uncond))


def test_equal_scales_telescope_to_plain_guidance():
    uncond, cond, micro_uncond = branches(1)
    for scale in (1.0, 3.0, 7.5):
        torch.testing.assert_close(combine_guidance(uncond, cond, scale, micro_uncond=micro_uncond, micro_scale=scale),
                                   combine_guidance(uncond, cond, scale), atol=1e-5, rtol=1e-5)


def test_each_scale_moves_only_its_own_difference():
    uncond, cond, micro_uncond = branches(2)
    base = combine_guidance(uncond, cond, 4.0, micro_uncond=micro_uncond, micro_scale=2.0)
    more_micro = combine_guidance(uncond, cond, 4.0, micro_uncond=micro_uncond, micro_scale=3.0)
    more_text = combine_guidance(uncond, cond, 5.0, micro_uncond=micro_uncond, micro_scale=2.0)
    torch.testing.assert_close(more_micro - base, cond - micro_uncond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(more_text - base, micro_uncond - uncond, atol=1e-5, rtol=1e-5)
    # Text scale 1: the negative prompt drops out; micro scale 1 as well: the conditional prediction.
    only_micro = combine_guidance(torch.full_like(uncond, 1e3), cond, 1.0, micro_uncond=micro_uncond, micro_scale=6.0)
    torch.testing.assert_close(only_micro, micro_uncond + 6.0 * (cond - micro_uncond), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(combine_guidance(uncond, cond, 1.0, micro_uncond=micro_uncond, micro_scale=1.0), cond, atol=1e-5, rtol=1e-5)


def test_errors_name_what_is_missing():
    uncond, cond, micro_uncond = branches(3)
    with pytest.raises(ValueError, match="got only micro_uncond"):
        combine_guidance(uncond, cond, 5.0, micro_uncond=micro_uncond)
    with pytest.raises(ValueError, match="got only micro_scale"):
        combine_guidance(uncond, cond, 5.0, micro_scale=2.0)
    with pytest.raises(ValueError, match=r"micro_uncond \(1, 4, 8, 8\)"):
        combine_guidance(uncond, cond, 5.0, micro_uncond=micro_uncond[:1], micro_scale=2.0)
