"""Tests of microcond.data.buckets: SDXL table, generator, nearest-aspect assignment, spec parser."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microcond.data.buckets import MAX_BUCKETS, MAX_SIDE, SDXL_BUCKETS, assign_bucket, make_buckets, parse_buckets


def _log_aspect_distance(height: int, width: int, bucket: tuple[int, int]) -> float:
    return abs(math.log(height / width) - math.log(bucket[0] / bucket[1]))


def test_sdxl_table_is_the_papers():
    assert len(SDXL_BUCKETS) == 40 == len(set(SDXL_BUCKETS))
    assert all(h % 64 == 0 and w % 64 == 0 for h, w in SDXL_BUCKETS)
    assert list(SDXL_BUCKETS) == sorted(SDXL_BUCKETS, key=lambda b: b[0] / b[1])
    assert SDXL_BUCKETS[0] == (512, 2048) and SDXL_BUCKETS[-1] == (2048, 512)
    assert (1024, 1024) in SDXL_BUCKETS


def test_generator_reproduces_sdxl_table_shape_for_shape():
    generated = make_buckets(1024, step=64, max_aspect=4.0)
    # App. I lists 704x1344 but not its mirror (generative-models issue #112); the rule is symmetric.
    assert generated == tuple(sorted(SDXL_BUCKETS + ((1344, 704),), key=lambda b: b[0] / b[1]))
    assert tuple(b for b in generated if b != (1344, 704)) == SDXL_BUCKETS


@pytest.mark.parametrize("base, step", [(32, 8), (32, 16), (24, 16), (8, 64), (1, 1), (16, 32), (100, 7)])
def test_tiny_bases_give_nonzero_buckets(base, step):
    buckets = make_buckets(base, step=step)
    assert buckets, "never empty"
    assert all(h >= step and w >= step and h % step == 0 and w % step == 0 for h, w in buckets)
    if base % step == 0:
        assert (base, base) in buckets


def test_tiny_base_32_step_8_table():
    assert make_buckets(32, step=8) == (
        (16, 64), (16, 56), (24, 48), (24, 40), (32, 32), (40, 24), (48, 24), (56, 16), (64, 16),
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    base=st.integers(1, 1600),
    step=st.sampled_from([1, 8, 16, 32, 64]),
    max_aspect=st.floats(1.0, 6.0),
    min_side=st.none() | st.integers(1, 256),
)
def test_generator_invariants(base, step, max_aspect, min_side):
    if step == 1 and base > 200:
        base = base // 8 + 1  # step 1 enumerates every side length: keep it small
    buckets = make_buckets(base, step=step, max_aspect=max_aspect, min_side=min_side)
    assert buckets and len(set(buckets)) == len(buckets)
    assert list(buckets) == sorted(buckets, key=lambda b: (b[0] / b[1], b[0]))
    low = max(step, math.ceil((min_side or step) / step) * step)  # smallest allowed side
    aspects = set()
    for h, w in buckets:
        assert h % step == 0 and w % step == 0 and min(h, w) >= step
        g = math.gcd(h, w)
        aspects.add((h // g, w // g))
        if min(h, w) > low:  # not clamped at the smallest side: the area is within rounding
            assert max(h, w) <= max_aspect * min(h, w) + 1e-9
            assert abs(h * w - base * base) <= max(h, w) * step / 2 + 0.1 * base * base
    assert len(aspects) == len(buckets), "one bucket per aspect ratio"
    assert set(buckets) == {(w, h) for h, w in buckets}, "both orientations"
    if base % step == 0 and base >= low:
        assert (base, base) in buckets


def test_make_buckets_rejects_bad_arguments():
    for kwargs in ({"base": 0}, {"base": 32, "step": 0}, {"base": 32, "max_aspect": 0.5}, {"base": 32, "min_side": 0}):
        with pytest.raises(ValueError, match="make_buckets"):
            make_buckets(**kwargs)


def test_assign_exact_aspect_and_extremes():
    assert assign_bucket(1024, 1024, SDXL_BUCKETS) == (1024, 1024)
    assert assign_bucket(3 * 768, 3 * 1344, SDXL_BUCKETS) == (768, 1344)
    assert assign_bucket(1, 1_000_000, SDXL_BUCKETS) == (512, 2048)
    assert assign_bucket(1_000_000, 1, SDXL_BUCKETS) == (2048, 512)
    assert assign_bucket(1, 1, [(16, 64)]) == (16, 64)


def test_assign_ties_are_deterministic_and_order_free():
    # A square image is exactly between 1:2 and 2:1 in log space.
    assert assign_bucket(50, 50, [(32, 64), (64, 32)]) == (32, 64)  # same area: smaller height
    assert assign_bucket(50, 50, [(64, 32), (32, 64)]) == (32, 64)
    assert assign_bucket(50, 50, [(64, 32), (16, 32)]) == (64, 32)  # larger area wins


@settings(max_examples=200, deadline=None)
@given(height=st.integers(1, 10**6), width=st.integers(1, 10**6), seed=st.integers(0, 2**16))
def test_assign_is_nearest_in_log_space(height, width, seed):
    buckets = list(make_buckets(256, step=32))
    chosen = assign_bucket(height, width, buckets)
    best = min(_log_aspect_distance(height, width, b) for b in buckets)
    assert _log_aspect_distance(height, width, chosen) <= best + 1e-12
    random.Random(seed).shuffle(buckets)
    assert assign_bucket(height, width, buckets) == chosen


def test_assigned_bucket_only_trims_the_rounding():
    """Inside the table's aspect range, the crop trims at most half the widest aspect gap."""
    logs = [math.log(h / w) for h, w in SDXL_BUCKETS]
    half_gap = max(b - a for a, b in zip(logs, logs[1:])) / 2
    for height in range(512, 2049, 37):
        for width in range(512, 2049, 41):
            bucket = assign_bucket(height, width, SDXL_BUCKETS)
            assert _log_aspect_distance(height, width, bucket) <= half_gap + 1e-12


def test_assign_rejects_bad_input():
    with pytest.raises(ValueError, match="positive"):
        assign_bucket(0, 10, SDXL_BUCKETS)
    with pytest.raises(ValueError, match="at least one bucket"):
        assign_bucket(10, 10, [])


def test_parse_buckets_forms():
    assert parse_buckets("sdxl") == SDXL_BUCKETS
    assert parse_buckets(" SDXL ") == SDXL_BUCKETS
    assert parse_buckets("square:32") == ((32, 32),)
    assert parse_buckets("base:1024") == make_buckets(1024)
    assert parse_buckets("base:32:step=16") == make_buckets(32, step=16)
    assert parse_buckets("base:64:step=16:max_aspect=2:min_side=32") == make_buckets(
        64, step=16, max_aspect=2.0, min_side=32
    )
    assert parse_buckets("32x48, 32x32,32x32") == ((32, 48), (32, 32))


@pytest.mark.parametrize("spec", ["", "sdx", "square:", "square:0", "base:abc", "base:32:bogus=1", "32x", "32x0", "axb"])
def test_parse_buckets_errors_say_what_is_expected(spec):
    with pytest.raises(ValueError, match="bucket spec"):
        parse_buckets(spec)


@pytest.mark.parametrize("spec, limit", [("base:1000000000:step=1", "at most 16384 px"), ("square:16385", "at most 16384 px"),
                                         ("16x99999", "at most 16384 px"), ("base:64:min_side=20000", "at most 16384 px"),
                                         ("base:4096:step=8", "limit of 10000"), ("base:16384:step=1", "limit of 10000")])
def test_parse_buckets_refuses_tables_beyond_the_memory_bounds(spec, limit):
    with pytest.raises(ValueError, match=limit) as caught:
        parse_buckets(spec)
    assert "\n" not in str(caught.value)


def test_make_buckets_is_bounded_for_any_arguments():
    for kwargs in ({"base": 10**9, "step": 1}, {"base": 10**9}, {"base": 2048, "step": 1}, {"base": 64, "step": 1, "max_aspect": float("inf")}):
        with pytest.raises(ValueError, match=f"too fine a grid.*limit of {MAX_BUCKETS}"):
            make_buckets(**kwargs)
    assert len(parse_buckets(f"base:{MAX_SIDE}")) <= MAX_BUCKETS  # the largest base at the default step
