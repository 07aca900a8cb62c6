"""The micro-conditioning core against SDXL as published (diffusers as the oracle)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding
from hypothesis import given, settings
from hypothesis import strategies as st

import microcond
from microcond import MicroCond, MicroCondEmbedder, fourier_features, time_ids
from microcond.cond.embedder import resized_size


def oracle(x: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """diffusers' SDXL embedding of a flat tensor of ids, (N, dim)."""
    return get_timestep_embedding(x.flatten(), dim, flip_sin_to_cos=True, downscale_freq_shift=0)


# ------------------------------------------------------------------------------ fourier_features


def test_fourier_matches_diffusers_on_special_ids():
    x = torch.tensor([0, 1, 517, 1023, 1024, 4096], dtype=torch.int64)
    ours = fourier_features(x)
    assert ours.dtype == torch.float32 and ours.shape == (6, 256)
    torch.testing.assert_close(ours, oracle(x), atol=1e-5, rtol=0)


def test_fourier_matches_diffusers_on_random_ids():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8192, (512,), generator=g)
    torch.testing.assert_close(fourier_features(x), oracle(x), atol=1e-5, rtol=0)


def test_fourier_against_float64_formula():
    # Independent of diffusers: the paper's formula in float64 (divisor 128, not 127).
    x = torch.tensor([3.0, 700.0, 2048.0], dtype=torch.float64)
    i = torch.arange(128, dtype=torch.float64)
    args = x[:, None] * torch.exp(-math.log(10000.0) * i / 128)
    expected = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    torch.testing.assert_close(fourier_features(x).double(), expected, atol=1e-4, rtol=0)


def test_fourier_of_zero_is_ones_then_zeros():
    f0 = fourier_features(torch.zeros(1))[0]
    assert torch.equal(f0[:128], torch.ones(128))
    assert torch.equal(f0[128:], torch.zeros(128))


def test_fourier_stays_float32_under_autocast():
    x = torch.tensor([1023.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fourier_features(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, oracle(torch.tensor([1023])), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ time_ids / order


def test_time_ids_order_and_dtype():
    conds = [MicroCond((1023, 517), (3, 7), (1024, 960)), MicroCond((2049, 64), (0, 0), (512, 2048))]
    ids = time_ids(conds)
    assert ids.dtype == torch.int64
    assert ids.tolist() == [[1023, 517, 3, 7, 1024, 960], [2049, 64, 0, 0, 512, 2048]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ids_stay_exact_when_model_runs_in_low_precision(dtype):
    # diffusers builds ids in the model dtype: bf16 turns 1023 into 1024, fp16 turns 2049 into 2048.
    values = [1023, 517, 2049, 3, 4097, 777]
    assert torch.tensor(values, dtype=dtype).tolist() != values  # the hazard is real
    ids = time_ids([MicroCond(tuple(values[0:2]), tuple(values[2:4]), tuple(values[4:6]))])
    model = torch.nn.Linear(1536, 4).to(dtype)
    emb = MicroCondEmbedder()(ids)
    assert ids.tolist() == [values]
    torch.testing.assert_close(emb, oracle(torch.tensor(values)).reshape(1, -1), atol=1e-5, rtol=0)
    assert model(emb.to(dtype)).dtype == dtype  # only the features, never the ids, are cast
    with pytest.raises(ValueError, match="stay exact"):
        MicroCondEmbedder()(ids.to(dtype))


def test_embedding_block_order_is_sdxl_order():
    cond = MicroCond((11, 22), (33, 44), (55, 66))
    emb = MicroCondEmbedder()(time_ids([cond]))[0].reshape(6, 256)
    for block, value in enumerate([11, 22, 33, 44, 55, 66]):
        torch.testing.assert_close(emb[block], oracle(torch.tensor([value]))[0], atol=1e-5, rtol=0)


def test_subset_of_signals_and_extra_scalar():
    # SDXL refiner layout: original size, crop, aesthetic score (5 ids, 1280 features).
    embedder = MicroCondEmbedder(signals=("original_size", "crop_top_left"), extra=("aesthetic_score",))
    cond = MicroCond((768, 1024), (16, 0), (1024, 1024))
    ids = embedder.ids([cond], extra={"aesthetic_score": [6.0]})
    assert ids.tolist() == [[768.0, 1024.0, 16.0, 0.0, 6.0]]
    emb = embedder(ids)
    assert emb.shape == (1, 5 * 256) and embedder.out_dim == 1280
    torch.testing.assert_close(emb, oracle(ids).reshape(1, -1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="aesthetic_score"):
        embedder.ids([cond])


def test_embedder_rejects_bad_configuration():
    with pytest.raises(ValueError, match="unknown"):
        MicroCondEmbedder(signals=("size",))
    with pytest.raises(ValueError, match="probability"):
        MicroCondEmbedder(dropout=1.5)
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        MicroCondEmbedder()(torch.zeros(2, 4))


# ------------------------------------------------------------------------------ dropout


def test_dropout_zeroes_whole_signals_per_sample():
    embedder = MicroCondEmbedder(dropout=0.5).train()
    ids = time_ids([MicroCond((100 + i, 200), (i, 0), (64, 64)) for i in range(64)])
    g = torch.Generator().manual_seed(7)
    drop = embedder.sample_drop(64, torch.Generator().manual_seed(7))
    emb = embedder(ids, generator=g).reshape(64, 3, 2, 256)  # (B, signal, id, dim)
    full = MicroCondEmbedder().eval()(ids).reshape(64, 3, 2, 256)
    for b in range(64):
        for s in range(3):
            if drop[b, s]:
                assert torch.count_nonzero(emb[b, s]) == 0
            else:
                assert torch.equal(emb[b, s], full[b, s])
    # Rows differ in which signals they drop: the mask is per sample and per signal.
    assert len({tuple(row.tolist()) for row in drop}) > 1


def test_dropout_rate_within_statistical_bounds():
    p, n = 0.1, 20000
    embedder = MicroCondEmbedder(dropout=p).train()
    drop = embedder.sample_drop(n, torch.Generator().manual_seed(1))  # (n, 3)
    sigma = math.sqrt(p * (1 - p) / n)
    for rate in drop.float().mean(0).tolist():
        assert abs(rate - p) < 5 * sigma
    # Signals are dropped independently: P(two dropped together) ~ p^2.
    both = (drop[:, 0] & drop[:, 1]).float().mean().item()
    assert abs(both - p * p) < 5 * math.sqrt(p * p / n)


def test_dropout_reproducible_by_seed_and_off_in_eval():
    embedder = MicroCondEmbedder(dropout=0.3).train()
    ids = time_ids([MicroCond((64, 64), (0, 0), (64, 64))] * 32)
    a = embedder(ids, generator=torch.Generator().manual_seed(3))
    b = embedder(ids, generator=torch.Generator().manual_seed(3))
    c = embedder(ids, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    embedder.eval()
    assert torch.equal(embedder(ids), MicroCondEmbedder()(ids))


def test_null_condition_is_all_zeros_and_differs_from_crop_zero():
    embedder = MicroCondEmbedder().eval()
    ids = time_ids([MicroCond((64, 64), (0, 0), (64, 64))])
    null = embedder(ids, embedder.null_drop(1))
    assert torch.count_nonzero(null) == 0
    # A crop of (0, 0) is F(0) = [1]*128 + [0]*128, not the null condition.
    assert torch.count_nonzero(embedder(ids).reshape(6, 256)[2]) == 128


# ------------------------------------------------------------------------------ MicroCond


def test_public_names_and_docstrings():
    for name in ("MicroCond", "MicroCondEmbedder", "fourier_features", "time_ids"):
        assert getattr(microcond, name).__doc__
    doc = MicroCond.__doc__
    assert "(height, width)" in doc and "(top, left)" in doc


def test_microcond_is_frozen_and_normalises_to_int_tuples():
    cond = MicroCond([1024, 768], [0, 128.0], (1024, 1024))
    assert cond.original_size == (1024, 768) and cond.crop_top_left == (0, 128)
    assert all(type(v) is int for v in cond.ids)
    with pytest.raises(AttributeError):
        cond.original_size = (1, 1)


sizes = st.tuples(st.integers(1, 10**6), st.integers(1, 10**6))
offsets = st.tuples(st.integers(0, 10**6), st.integers(0, 10**6))


@given(sizes, offsets, sizes)
def test_valid_records_round_trip(original, crop, target):
    cond = MicroCond(original, crop, target)
    assert cond.ids == (*original, *crop, *target)


@given(
    st.sampled_from(["original_size", "crop_top_left", "target_size"]),
    st.one_of(
        st.tuples(st.integers(max_value=-1), st.integers(1, 10)),
        st.tuples(st.integers(1, 10), st.floats(allow_nan=True).filter(lambda v: not float(v).is_integer() if v == v else True)),
        st.tuples(st.integers(1, 10)),
        st.tuples(st.integers(1, 10), st.integers(1, 10), st.integers(1, 10)),
        st.just("64x64"),
        st.just(64),
        st.tuples(st.booleans(), st.integers(1, 10)),
    ),
)
def test_invalid_records_name_field_and_value(field, bad):
    good = {"original_size": (64, 64), "crop_top_left": (0, 0), "target_size": (32, 32)}
    good[field] = bad
    with pytest.raises(ValueError) as err:
        MicroCond(**good)
    assert field in str(err.value) and repr(bad) in str(err.value)


@given(st.integers(1, 10**4))
def test_zero_size_rejected_but_zero_crop_accepted(n):
    with pytest.raises(ValueError, match="original_size"):
        MicroCond((0, n), (0, 0), (n, n))
    with pytest.raises(ValueError, match="target_size"):
        MicroCond((n, n), (0, 0), (n, 0))
    assert MicroCond((n, n), (0, 0), (n, n)).crop_top_left == (0, 0)


@settings(max_examples=200)
@given(sizes, st.integers(1, 2048))
def test_resized_size_covers_target_with_short_side_equal(original, s):
    rh, rw = resized_size(original, (s, s))
    assert min(rh, rw) == s and rh >= s and rw >= s
    MicroCond(original, (rh - s, rw - s), (s, s)).check_crop_inside()
    with pytest.raises(ValueError, match="outside"):
        MicroCond(original, (rh - s + 1, rw - s), (s, s)).check_crop_inside()
