"""Aspect buckets for multi-aspect training (SDXL paper section 2.3, App. I).

A bucket is a target size ``(height, width)`` in pixels. Each batch comes from one bucket, whose
size is the ``target_size`` condition. An image goes to the bucket with the nearest aspect ratio
(in log space), so the crop that follows only trims the rounding. Pure Python: no numpy, no torch.
"""

from __future__ import annotations

import math
from typing import Sequence

Bucket = tuple[int, int]  # (height, width) in pixels

# SDXL paper App. I, as published: 40 shapes (height, width), ordered by aspect h/w. The table
# lists 704x1344 but not its mirror 1344x704 (Stability-AI/generative-models issue #112; sgm's
# sampling script has both), so `make_buckets(1024)` gives these 40 plus (1344, 704).
SDXL_BUCKETS: tuple[Bucket, ...] = (
    (512, 2048), (512, 1984), (512, 1920), (512, 1856), (576, 1792), (576, 1728), (576, 1664),
    (640, 1600), (640, 1536), (704, 1472), (704, 1408), (704, 1344), (768, 1344), (768, 1280),
    (832, 1216), (832, 1152), (896, 1152), (896, 1088), (960, 1088), (960, 1024), (1024, 1024),
    (1024, 960), (1088, 960), (1088, 896), (1152, 896), (1152, 832), (1216, 832), (1280, 768),
    (1344, 768), (1408, 704), (1472, 704), (1536, 640), (1600, 640), (1664, 576), (1728, 576),
    (1792, 576), (1856, 512), (1920, 512), (1984, 512), (2048, 512),
)  # fmt: skip

# Lowest bucket area, as a fraction of base**2. SDXL's table holds every 64-multiple shape with
# area in [0.9, 1.0] * 1024**2 and aspect within [1/4, 4] (its smallest area is 704x1344,
# 0.902; the largest excluded, 640x1472, is 0.898).
MIN_AREA_FRACTION = 0.9

# Bounds that keep a bucket table small in memory and time: a spec beyond them is refused.
MAX_SIDE = 16384  # pixels, any side or base in a spec (SDXL trains at 1024)
MAX_BUCKETS = 10_000  # candidate shapes (and side lengths) a generated table may enumerate (SDXL: 41)


def _aspect_key(bucket: Bucket) -> tuple[float, int]:
    """Sort key: aspect h/w ascending (SDXL's table order), then height."""
    return bucket[0] / bucket[1], bucket[0]


def make_buckets(
    base: int, step: int = 64, max_aspect: float = 4.0, min_side: int | None = None
) -> tuple[Bucket, ...]:
    """Buckets with area near ``base**2``, sides multiples of ``step``, aspect within the limits.

    Rule: every side length ``a`` (a multiple of ``step``, at least ``min_side``) is paired with
    each other side ``b`` (a multiple of ``step``) such that ``0.9 * base**2 <= a * b <= base**2``;
    where no ``b`` qualifies (a coarse step against a small base), with the one ``b`` whose area
    is nearest ``base**2``. Shapes with aspect ``h/w`` outside ``[1/max_aspect, max_aspect]`` are
    dropped, both orientations are kept, and of shapes with the same aspect only the one with
    area nearest ``base**2`` stays. For ``base=1024`` this is SDXL's App. I table plus 1344x704.
    Sorted by aspect h/w. Never empty, never a side below ``step``.
    """
    for name, value in (("base", base), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"make_buckets: {name} must be a positive integer number of pixels, got {value!r}")
    if not (isinstance(max_aspect, (int, float)) and max_aspect >= 1.0):
        raise ValueError(f"make_buckets: max_aspect must be a number >= 1 (h/w and w/h limit), got {max_aspect!r}")
    if min_side is None:
        min_side = step
    if isinstance(min_side, bool) or not isinstance(min_side, int) or min_side < 1:
        raise ValueError(f"make_buckets: min_side must be a positive integer or None, got {min_side!r}")
    first = max(step, math.ceil(min_side / step) * step)  # smallest allowed side
    area_max = base * base
    area_min = MIN_AREA_FRACTION * area_max
    # A side can't exceed sqrt(max_aspect * area) for any kept shape; the fallback can go up to
    # one step beyond the area, so bound the loop by 2 * base * sqrt(max_aspect) plus a step.
    last = max(first, int(2 * base * math.sqrt(min(max_aspect, 1e6))) + step)
    sides = range(first, last + 1, step)
    too_fine = f"make_buckets: base {base} with step {step} and max_aspect {max_aspect} is too fine a grid"
    advice = "use a coarser step, a smaller base or a smaller max_aspect"
    if len(sides) > MAX_BUCKETS:
        raise ValueError(f"{too_fine}: {len(sides)} side lengths, more than the limit of {MAX_BUCKETS}; {advice}")

    def in_aspect(h: int, w: int) -> bool:
        # Exact at the boundary (512x2048 is 4.0): compare h <= max_aspect * w without division.
        return h <= max_aspect * w + 1e-9 and w <= max_aspect * h + 1e-9

    def partners(a: int) -> range:
        """The sides b paired with a (before the exact aspect test): the area band, else its nearest."""
        lo = max(first, math.ceil(area_min / a / step) * step)
        hi = (area_max // a) // step * step
        if lo > hi:
            nearest = max(first, round(area_max / a / step) * step)
            return range(nearest, nearest + 1)
        # Leave out sides that fail in_aspect for certain (a superset of the ones that pass).
        lo = max(lo, math.ceil(a / max_aspect / step - 1e-9) * step)
        hi = min(hi, math.floor(min(a * max_aspect, area_max) / step + 1e-9) * step)
        return range(lo, hi + 1, step)

    candidates = sum(len(partners(a)) for a in sides)  # counted before any is built: memory stays bounded
    if candidates > MAX_BUCKETS:
        raise ValueError(f"{too_fine}: about {candidates} bucket shapes, more than the limit of {MAX_BUCKETS}; {advice}")
    shapes: set[Bucket] = set()
    for a in sides:
        for b in partners(a):
            for h, w in ((a, b), (b, a)):
                if in_aspect(h, w):
                    shapes.add((h, w))
    if not shapes:
        # Only possible when min_side exceeds every in-aspect shape near base**2: one square.
        shapes.add((first, first))
    # One bucket per aspect ratio: the area nearest base**2 (ties to the larger area).
    by_aspect: dict[tuple[int, int], Bucket] = {}
    for h, w in shapes:
        g = math.gcd(h, w)
        key = (h // g, w // g)
        kept = by_aspect.get(key)
        if kept is None or (abs(h * w - area_max), -h * w) < (abs(kept[0] * kept[1] - area_max), -kept[0] * kept[1]):
            by_aspect[key] = (h, w)
    return tuple(sorted(by_aspect.values(), key=_aspect_key))


def assign_bucket(height: int, width: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is nearest ``height / width`` in log space.

    Exact integer arithmetic, so the result never depends on float rounding. Ties (an image
    aspect exactly between two buckets') go to the larger bucket area, then the smaller height;
    the order of ``buckets`` never matters.
    """
    if isinstance(height, bool) or isinstance(width, bool) or not (isinstance(height, int) and isinstance(width, int)):
        raise ValueError(f"assign_bucket: height and width must be integers, got {height!r} x {width!r}")
    if height < 1 or width < 1:
        raise ValueError(f"assign_bucket: image size must be positive (height, width), got ({height}, {width})")
    if not buckets:
        raise ValueError("assign_bucket: needs at least one bucket, got none")
    best: Bucket | None = None
    best_num, best_den = 0, 1
    for bucket in buckets:
        bh, bw = bucket
        # |log(h/w) - log(bh/bw)| = log(num/den) with num >= den: compare num/den exactly.
        x, y = height * bw, width * bh
        num, den = (x, y) if x >= y else (y, x)
        if best is None:
            better = True
        else:
            lhs, rhs = num * best_den, best_num * den
            if lhs != rhs:
                better = lhs < rhs
            else:
                better = (-bh * bw, bh) < (-best[0] * best[1], best[0])
        if better:
            best, best_num, best_den = (bh, bw), num, den
    assert best is not None
    return best


def _parse_int(text: str, what: str, spec: str) -> int:
    """A pixel count of a spec: a whole number in [1, MAX_SIDE]."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"bucket spec {spec!r}: {what} must be an integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"bucket spec {spec!r}: {what} must be positive, got {value}")
    if value > MAX_SIDE:
        raise ValueError(f"bucket spec {spec!r}: {what} must be at most {MAX_SIDE} px, got {value}")
    return value


SPEC_HELP = (
    "expected 'sdxl', 'square:SIZE', 'base:BASE[:step=S][:max_aspect=A][:min_side=M]' "
    "or a list of HEIGHTxWIDTH shapes like '32x32,32x48'"
)


def parse_buckets(spec: str) -> tuple[Bucket, ...]:
    """Buckets from a config/CLI string: ``sdxl``, ``square:32``, ``base:1024``,
    ``base:32:step=16:max_aspect=2``, or explicit ``HxW`` shapes ``32x32,32x48`` (sorted)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"bucket spec must be a non-empty string, got {spec!r}; {SPEC_HELP}")
    text = spec.strip().lower()
    if text == "sdxl":
        return SDXL_BUCKETS
    head, _, rest = text.partition(":")
    if head == "square":
        size = _parse_int(rest, "the square size", spec)
        return ((size, size),)
    if head == "base":
        parts = rest.split(":")
        base = _parse_int(parts[0], "the base size", spec)
        options: dict[str, int | float] = {}
        for part in parts[1:]:
            key, eq, value = part.partition("=")
            if not eq or key not in ("step", "max_aspect", "min_side"):
                raise ValueError(f"bucket spec {spec!r}: unknown option {part!r}; {SPEC_HELP}")
            if key == "max_aspect":
                try:
                    options[key] = float(value)
                except ValueError:
                    raise ValueError(f"bucket spec {spec!r}: max_aspect must be a number, got {value!r}") from None
            else:
                options[key] = _parse_int(value, key, spec)
        return make_buckets(base, **options)  # type: ignore[arg-type]
    shapes: set[Bucket] = set()
    for item in text.split(","):
        h, x, w = item.strip().partition("x")
        if not x:
            raise ValueError(f"bucket spec {spec!r}: cannot read {item.strip()!r}; {SPEC_HELP}")
        shapes.add((_parse_int(h, "a bucket height", spec), _parse_int(w, "a bucket width", spec)))
    return tuple(sorted(shapes, key=_aspect_key))
