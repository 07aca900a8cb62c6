"""Rank correlation and intervals of a mean against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from microcond.metrics.stats import average_ranks, mean_interval, spearman, t975


def test_spearman_of_monotone_pairs_is_one_or_minus_one():
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [5, 3, 2, -7]) == pytest.approx(-1.0)


def test_tied_values_share_their_average_rank():
    # A sweep repeats each size once per image: x has ties. Ranks (0.5, 0.5, 2.5, 2.5) against
    # (0, 1, 2, 3) correlate 4 / (2 * sqrt(5)); ranking ties by position would give 1.
    assert average_ranks([3, 1, 1, 2]).tolist() == [3.0, 0.5, 0.5, 2.0]
    assert spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(2 / math.sqrt(5))


def test_spearman_is_nan_for_a_constant_side_and_leaves_nan_pairs_out():
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    assert spearman([1, 2, float("nan"), 3], [1, 2, 0, 3]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="paired"):
        spearman([1, 2], [1, 2, 3])


def test_mean_interval_uses_student_t():
    r = mean_interval([1.0, 2.0, 3.0])  # sd 1, n 3, t(2) = 4.303
    assert r["mean"] == pytest.approx(2.0) and r["n"] == 3
    assert r["high"] - r["mean"] == pytest.approx(4.303 / math.sqrt(3))
    assert r["mean"] - r["low"] == pytest.approx(4.303 / math.sqrt(3))


def test_mean_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = [(r := mean_interval(rng.normal(3.0, 2.0, 5)))["low"] <= 3.0 <= r["high"] for _ in range(2000)]
    assert 0.93 <= np.mean(covered) <= 0.97  # a normal quantile would cover about 88% with n = 5


def test_mean_interval_of_one_value_has_no_interval():
    r = mean_interval([4.0, float("nan")])
    assert r["mean"] == 4.0 and r["n"] == 1 and math.isnan(r["low"]) and math.isnan(r["high"])
    assert math.isnan(mean_interval([])["mean"])


def test_t975_beyond_the_table_is_close_to_the_exact_quantile():
    assert t975(7) == 2.365
    assert t975(40) == pytest.approx(2.021, abs=0.002)
    assert t975(120) == pytest.approx(1.980, abs=0.002)
    with pytest.raises(ValueError):
        t975(0)
