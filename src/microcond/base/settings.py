"""Range checks shared by every settings dataclass (the training config, the demo's, the
experiments' budgets): numbers a flag or config field may hold."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Sequence

# Every number a config or flag may hold: integers within int32, other numbers finite and within
# a million. Tighter ranges are checked field by field.
MAX_INT = 2**31 - 1
MAX_FLOAT = 1e6


def out_of_range(settings: object, exempt: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(field, expected) for each number of a settings dataclass outside :data:`MAX_INT` /
    :data:`MAX_FLOAT`, in tuples too; ``exempt`` fields have their own checks."""
    bad = []
    for f in fields(settings):
        values = getattr(settings, f.name)
        for v in values if isinstance(values, tuple) else (values,):
            if f.name in exempt or isinstance(v, bool):
                continue
            if isinstance(v, int) and abs(v) > MAX_INT:
                bad.append((f.name, f"an integer from -{MAX_INT} to {MAX_INT}"))
                break
            if isinstance(v, float) and not (math.isfinite(v) and abs(v) <= MAX_FLOAT):
                bad.append((f.name, f"a finite number from -{MAX_FLOAT:g} to {MAX_FLOAT:g}"))
                break
    return bad


def check_counts(settings: object, zero_ok: Sequence[str] = ()) -> None:
    """ValueError naming the flags of a settings dataclass's integer fields below 1 (below 0 for
    ``zero_ok``), or any number out of range (:func:`out_of_range`)."""
    for name, expected in out_of_range(settings, exempt=("seed",)):
        raise ValueError(f"--{name.replace('_', '-')} must be {expected}, got {getattr(settings, name)!r}")
    bad = [f"--{f.name.replace('_', '-')} {v}" for f in fields(settings) if type(v := getattr(settings, f.name)) is int and v < (0 if f.name in zero_ok else 1)]
    if bad:
        zero = f" ({', '.join('--' + n.replace('_', '-') for n in zero_ok)}: 0 allowed)" if zero_ok else ""
        raise ValueError(f"expected positive integers{zero}, got {', '.join(bad)}")


def check_scales(settings: object, names: Sequence[str]) -> None:
    """Make the named fields of a frozen settings dataclass floats; ValueError naming the flag of
    one that is not a finite number >= 0 (guidance scales: 0 is a valid one)."""
    for name in names:
        scale = float(getattr(settings, name))
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {scale}")
        object.__setattr__(settings, name, scale)
