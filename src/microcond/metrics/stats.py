"""Small statistics of measured numbers, without torch: rank correlation, intervals of a mean and of a rate.

Pages and probes report sample means from a handful of images (8 to 32 per value), so the
interval of a mean uses Student's t, not the normal quantile, and the rank correlation gives
tied values their average rank (a sweep repeats each requested size once per image).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (standard tables).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (within 0.002 above 30)."""
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}")
    return T975[df - 1] if df <= len(T975) else 1.96 + 2.4 / df


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 0..n-1 of ``values``, tied values sharing the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    _, group = np.unique(values, return_inverse=True)
    return (np.bincount(group, weights=ranks) / np.bincount(group))[group]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of paired values (ties averaged); NaN if either side is constant.

    Pairs with a NaN on either side are left out.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs paired values, got {len(x)} x and {len(y)} y")
    keep = np.isfinite(x) & np.isfinite(y)
    rx, ry = average_ranks(x[keep]), average_ranks(y[keep])
    if len(rx) < 2 or np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def mean_interval(values: Sequence[float]) -> dict:
    """Mean with its 95% Student-t interval, NaNs left out: ``{"mean", "low", "high", "n"}``.

    The interval is NaN below two values (one value has no spread to measure).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = len(v)
    mean = float(v.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": n}
    half = t975(n - 1) * float(v.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a binomial rate."""
    if n == 0:
        return (0.0, 1.0)
    p, z = k / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(flags) -> dict:
    """A cut-off rate with its 95% interval, from per-image flags."""
    k, n = int(sum(bool(f) for f in flags)), len(flags)
    low, high = wilson(k, n)
    return {"rate": k / max(n, 1), "low": low, "high": high, "n": n}


def slope(offsets: Sequence[float], centres: Sequence[float]) -> dict:
    """Least-squares slope of ``centres`` against ``offsets`` (object centre x against c_left), with a 95% interval (normal, OLS
    standard error); images without an object (NaN) are left out."""
    x, y = np.asarray(offsets, dtype=np.float64), np.asarray(centres, dtype=np.float64)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.ptp(x) == 0:
        return {"slope": float("nan"), "low": float("nan"), "high": float("nan"), "n": int(len(x))}
    xc = x - x.mean()
    b = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    residual = y - y.mean() - b * xc
    se = math.sqrt((residual**2).sum() / (len(x) - 2) / (xc * xc).sum())
    return {"slope": b, "low": b - 1.96 * se, "high": b + 1.96 * se, "n": int(len(x))}
