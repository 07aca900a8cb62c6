"""Loader throughput (images/s) with 0, 1 and 2 workers, from the pixel cache vs decoding in the loop,
and (``--stream``) streaming shards against reading the same shards indexed.

Baseline: decoding every image in the loop (no cache) with the same worker count, measured in the
same run. Images are synthetic mixed JPEG/PNG files of web-like sizes (or pass --data DIR with a
scan index). With ``--stream`` the images are also written into shards (``microcond shard``'s
writer) and read three ways with the same batches: indexed by member offset (the baseline),
streamed from the files, and streamed through ``pipe:cat`` (shuffle buffer 1000). One JSON line
per result.

    .venv/bin/python benchmarks/bench_loader.py                # about a minute on 2 cores
    .venv/bin/python benchmarks/bench_loader.py --images 2000 --repeats 5
    .venv/bin/python benchmarks/bench_loader.py --stream --images 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from microcond.data.loader import BucketBatches, make_loader
from microcond.data.pixelcache import PixelCache
from microcond.data.source import ImageSource


def synthetic_folder(folder: Path, count: int, seed: int = 0) -> ImageSource:
    """Smooth colour fields with light noise (compress like photos), half JPEG q90, half PNG, 200-900 px."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("path", "height", "width", "bytes", "mtime_ns", "status", "reason")}
    for k in range(count):
        h, w = (int(v) for v in rng.integers(200, 900, 2))
        field = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        noise = rng.integers(-6, 7, (h, w, 1), dtype=np.int16)  # (h, w, 1)
        pixels = np.clip(np.asarray(field, dtype=np.int16) + noise, 0, 255).astype(np.uint8)  # (h, w, 3)
        path = folder / (f"{k:05d}.jpg" if k % 2 == 0 else f"{k:05d}.png")
        Image.fromarray(pixels).save(path, **({"quality": 90} if k % 2 == 0 else {"compress_level": 6}))
        stat = path.stat()
        for key, value in zip(rows, (str(path), h, w, stat.st_size, stat.st_mtime_ns, "ok", "")):
            rows[key].append(value)
    return ImageSource.from_rows(rows, folder, {})


def throughput(dataset: BucketBatches, workers: int, batches: int) -> float:
    """Images/s over ``batches`` batches after the first (worker start-up and warm-up excluded)."""
    loader = make_loader(dataset, num_workers=workers)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    images = sum(next(it)["pixels"].shape[0] for _ in range(batches))
    return images / (time.perf_counter() - start)


def peak_rss_mib() -> dict[str, float]:
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="synthetic images (default 256)")
    parser.add_argument("--data", help="an image folder with index.parquet instead of synthetic images")
    parser.add_argument("--size", type=int, default=32, help="square training size (default 32)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per repeat (default 6)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported (default 3)")
    parser.add_argument("--stream", action="store_true", help="only: streamed shards against the same shards indexed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = {"device": "cpu", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "torch_threads": torch.get_num_threads()}
    buckets = ((args.size, args.size),)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            from microcond.data.loader import open_source

            source = open_source(args.data, cache_dir=tmp)
        else:
            t0 = time.perf_counter()
            source = synthetic_folder(Path(tmp), args.images)
            print(json.dumps({"what": "synthetic images written", "images": len(source), "seconds": round(time.perf_counter() - t0, 1)}))
        if args.stream:
            stream_vs_indexed(source, buckets, Path(tmp), args, env)
            return
        t0 = time.perf_counter()
        cache = PixelCache.build(source, buckets, Path(tmp) / "cache", processes=2, progress=False)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        PixelCache.build(source, buckets, Path(tmp) / "cache", progress=False)
        print(json.dumps({"what": "pixel cache", "images": len(source), "build_s": round(build_s, 2),
                          "build_images_per_s": round(len(source) / build_s, 1),
                          "reuse_s": round(time.perf_counter() - t0, 4), **cache.sizes(), **env}))
        for workers in (0, 1, 2):
            runs: dict[str, list[float]] = {"decode": [], "cached": []}
            for r in range(args.repeats + 1):  # alternate the two so both see the same machine load
                for name, use in (("decode", None), ("cached", cache)):
                    dataset = BucketBatches(source, buckets, args.batch, seed=r, cache=use, flip_probability=0.5)
                    rate = throughput(dataset, workers, args.batches)
                    if r:  # the first round is the warm-up
                        runs[name].append(rate)
            cached, decode = statistics.median(runs["cached"]), statistics.median(runs["decode"])
            print(json.dumps({"what": "loader images/s", "workers": workers, "size": args.size, "batch": args.batch,
                              "cached": round(cached, 1), "baseline_decode": round(decode, 1),
                              "speedup": round(cached / decode, 1), "peak_rss_mib": peak_rss_mib(),
                              "load_average": os.getloadavg()[0], **env}))


def stream_vs_indexed(source: ImageSource, buckets, tmp: Path, args, env: dict) -> None:
    """Images/s of the same shards streamed (files, pipe:cat) and indexed, 0 and 2 workers."""
    from microcond.data.shards import index_shards, write_shards
    from microcond.data.stream import ShardStream, StreamLoader

    shards = write_shards(source, tmp / "shards", max_count=max(len(source) // 8, 1), progress=False)
    indexed = index_shards(shards)
    readers = {
        "indexed": lambda workers, seed: make_loader(BucketBatches(indexed, buckets, args.batch, seed=seed, flip_probability=0.5), workers),
        "stream_files": lambda workers, seed: StreamLoader(ShardStream(shards, buckets, args.batch, seed=seed, shuffle_buffer=1000,
                                                                       flip_probability=0.5), workers),
        "stream_pipe": lambda workers, seed: StreamLoader(ShardStream([f"pipe:cat {p}" for p in shards], buckets, args.batch, seed=seed,
                                                                      shuffle_buffer=1000, flip_probability=0.5), workers),
    }
    for workers in (0, 2):
        rates: dict[str, list[float]] = {name: [] for name in readers}
        for r in range(args.repeats + 1):  # alternated, so all see the same machine load; round 0 warms up
            for name, make in readers.items():
                it = iter(make(workers, r))
                next(it)
                start = time.perf_counter()
                images = sum(next(it)["pixels"].shape[0] for _ in range(args.batches))
                if r:
                    rates[name].append(images / (time.perf_counter() - start))
        base = statistics.median(rates["indexed"])
        print(json.dumps({"what": "shard reader images/s", "workers": workers, "size": args.size, "batch": args.batch,
                          "baseline_indexed": round(base, 1),
                          **{name: round(statistics.median(v), 1) for name, v in rates.items() if name != "indexed"},
                          **{f"{name}_vs_indexed": round(statistics.median(v) / base, 2) for name, v in rates.items() if name != "indexed"},
                          "peak_rss_mib": peak_rss_mib(), "load_average": os.getloadavg()[0], **env}))


if __name__ == "__main__":
    main()
