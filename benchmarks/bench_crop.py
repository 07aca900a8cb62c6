"""Decode + resize + crop throughput: microcond's JPEG fast path against a plain Pillow pipeline.

For photo-like JPEGs (4:3, quality 90) with a short side of 512, 1024 and 2048 px, cropped to a
256 px target, measures images/s of
  - plain: full decode, Lanczos resize (short side = target), centre crop (the baseline);
  - full:  microcond.data.crop.decode_crop with fast=False (our path without DCT scaling);
  - fast:  decode_crop with fast=True (libjpeg DCT scaling to >= 2x, then Lanczos);
and the PSNR of fast against plain. One JSON line per size. Default run well under 2 minutes;
``--repeats`` and ``--sizes`` make it bigger.

    .venv/bin/python benchmarks/bench_crop.py
    .venv/bin/python benchmarks/bench_crop.py --sizes 512 1024 2048 4096 --repeats 9
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import PIL
from PIL import Image, features

from microcond.cond.record import resized_size
from microcond.data.crop import decode_crop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_crop import photo_like, psnr  # noqa: E402  (the test's photo-like content, one definition)


def make_jpeg(short_side: int, seed: int, blur: float) -> bytes:
    """A 4:3 landscape photo-like JPEG at quality 90, as bytes."""
    pixels = photo_like(short_side, round(short_side * 4 / 3), seed=seed, blur=blur)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def plain_pipeline(data: bytes, target: tuple[int, int]) -> np.ndarray:
    """Baseline: full decode, Lanczos resize to cover the target, centre crop."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB") if image.mode != "RGB" else image
        height, width = resized_size((image.height, image.width), target)
        resized = np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))  # (H, W, 3)
    top, left = (height - target[0]) // 2, (width - target[1]) // 2
    return resized[top : top + target[0], left : left + target[1]].copy()  # (th, tw, 3)


def images_per_second(methods: dict[str, Callable[[bytes], object]], images: list[bytes], repeats: int) -> dict[str, float]:
    """Median images/s of each method over ``repeats`` passes, after a warm-up pass.

    The methods take turns pass by pass, so load from other processes hits them alike.
    """
    for fn in methods.values():
        for data in images[:2]:
            fn(data)
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            for data in images:
                fn(data)
            rates[name].append(len(images) / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048], help="short sides in px")
    parser.add_argument("--target", type=int, default=256, help="square target side in px (default 256)")
    parser.add_argument("--images", type=int, default=4, help="distinct images per size (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per method (default 5)")
    parser.add_argument("--budget-s", type=float, default=6.0, help="rough seconds per method and size")
    parser.add_argument(
        "--blur",
        type=float,
        default=0.8,
        help="optical blur sigma in px of the content (default 0.8, camera-like, about 2.7 bits/px at "
        "quality 90); 0 is texture up to the pixel scale (about 4.2 bits/px, entropy decoding dominates)",
    )
    args = parser.parse_args(argv)
    target = (args.target, args.target)
    env = {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": 1,  # Pillow decodes and resizes on the calling thread
        "pillow": PIL.__version__,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
    }
    # Generate the JPEGs in a child process so the FFT's memory is not in this process's peak RSS.
    with multiprocessing.get_context("fork").Pool(1) as pool:
        jobs = {s: pool.starmap_async(make_jpeg, [(s, i, args.blur) for i in range(args.images)]) for s in args.sizes}
        corpus = {s: job.get() for s, job in jobs.items()}
    for short_side in args.sizes:
        images = corpus[short_side]
        rng = np.random.default_rng(0)

        def fast(data: bytes) -> np.ndarray:
            return decode_crop(data, target, rng, mode="center", fast=True)[0]

        def full(data: bytes) -> np.ndarray:
            return decode_crop(data, target, rng, mode="center", fast=False)[0]

        def plain(data: bytes) -> np.ndarray:
            return plain_pipeline(data, target)

        # Scale the pass length so each method takes about budget_s in total.
        start = time.perf_counter()
        plain(images[0])
        per_image = time.perf_counter() - start
        passes = max(1, int(args.budget_s / (per_image * len(images) * args.repeats)))
        work = images * passes
        rate = images_per_second({"plain": plain, "full": full, "fast": fast}, work, args.repeats)
        quality = min(psnr(fast(d), plain(d)) for d in images)
        bits_per_pixel = statistics.mean(len(d) * 8 for d in images) / (short_side * round(short_side * 4 / 3))
        result = {
            "bench": "crop",
            "short_side": short_side,
            "size_hw": [short_side, round(short_side * 4 / 3)],
            "target": args.target,
            "blur_px": args.blur,
            "jpeg_bits_per_px": round(bits_per_pixel, 2),
            "plain_img_s": round(rate["plain"], 1),
            "full_img_s": round(rate["full"], 1),
            "fast_img_s": round(rate["fast"], 1),
            "speedup_fast_vs_plain": round(rate["fast"] / rate["plain"], 2),
            "min_psnr_db_fast_vs_plain": round(quality, 1),
            "images_per_pass": len(work),
            "repeats": args.repeats,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **env,
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
