"""Scan throughput, as whole processes, against a Pillow loop that reads size and EXIF orientation.

Generates a corpus of mixed formats and sizes once (JPEG with and without EXIF orientation,
progressive JPEG, PNG, WebP, GIF, BMP, TIFF; sizes log-uniform 32..3000 px), warms the page
cache, then times each case as a separate process (median of --repeats) and prints one JSON line
per case:

* ``pillow_loop``: baseline, one process: walk, ``Image.open(path)``, ``.size``, EXIF orientation
  (``getexif()``; for PNG only the EXIF Pillow sees at open, so that nothing is decoded);
* ``scan_first``: ``microcond.data.scan.scan`` into a new index (all cores);
* ``scan_unchanged``: the same scan again over its own index (every file unchanged);
* ``cli_unchanged``: ``python -m microcond.cli scan`` over the same index (CLI start-up included).

Usage: python benchmarks/bench_scan.py [--files 20000] [--repeats 5] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BASELINE = r"""
import os, sys
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
EXT = {"jpg", "png", "webp", "gif", "bmp", "tif"}
def walk(d):
    with os.scandir(d) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                yield from walk(e.path)
            elif e.name.rpartition(".")[2] in EXT:
                yield e.path
n = 0
for path in walk(sys.argv[1]):
    with Image.open(path) as im:
        w, h = im.size
        exif = im.getexif() if im.format != "PNG" or "exif" in im.info else {}
        orientation = exif.get(0x0112, 1)
    n += 1
print(n)
"""

SCAN = r"""
import sys
from microcond.data.scan import scan
s = scan([sys.argv[1]], sys.argv[2], progress=False)
print(s.found, s.seconds, s.unchanged)
"""


def make_corpus(root: Path, files: int, seed: int = 0) -> None:
    """Mixed formats and sizes: a few hundred encoded templates, copied under many names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    kinds = [("jpg", "JPEG", {}), ("jpg", "JPEG", {"orientation": 6}), ("jpg", "JPEG", {"progressive": True}),
             ("jpg", "JPEG", {"orientation": 3}), ("png", "PNG", {}), ("webp", "WEBP", {"quality": 60}),
             ("gif", "GIF", {}), ("bmp", "BMP", {}), ("tif", "TIFF", {})]  # fmt: skip
    weights = np.array([30, 10, 10, 5, 20, 10, 5, 5, 5], dtype=float)
    templates = []
    for i in range(300):
        ext, fmt, opts = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        h, w = np.exp(rng.uniform(np.log(32), np.log(3000), 2)).astype(int)
        if fmt in ("BMP", "TIFF", "PNG"):  # uncompressed or slow to encode: keep them small
            h, w = min(h, 600), min(w, 600)
        y, x = np.mgrid[0:h, 0:w]
        pixels = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)
        im = Image.fromarray(pixels)
        if fmt == "GIF":
            im = im.convert("P")
        opts = dict(opts)
        if "orientation" in opts:
            exif = Image.Exif()
            exif[0x0112] = opts.pop("orientation")
            opts["exif"] = exif
        path = root / f"template{i}.{ext}"
        im.save(path, fmt, **opts)
        templates.append((path.read_bytes(), ext))
        path.unlink()
    for n in range(files):
        data, ext = templates[n % len(templates)]
        folder = root / f"part{n // 1000:04d}"
        folder.mkdir(exist_ok=True)
        (folder / f"{n:07d}.{ext}").write_bytes(data)


def run(cmd: list[str]) -> tuple[float, str]:
    """Wall seconds of one process (start-up included) and its stdout."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr}")
    return seconds, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--corpus", type=Path, default=None, help="corpus folder (default: a temp folder, kept)")
    args = parser.parse_args()
    corpus = args.corpus or Path(tempfile.gettempdir()) / f"microcond-bench-scan-{args.files}"
    if not (corpus / "done").exists():
        shutil.rmtree(corpus, ignore_errors=True)
        corpus.mkdir(parents=True)
        t = time.perf_counter()
        make_corpus(corpus, args.files)
        (corpus / "done").write_text("")
        print(f"made {args.files} files in {corpus} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    index = work / "index.parquet"
    py = sys.executable
    cases = {
        "pillow_loop": ([py, "-c", BASELINE, str(corpus)], None),
        "scan_first": ([py, "-c", SCAN, str(corpus), str(index)], lambda: index.unlink(missing_ok=True)),
        "scan_unchanged": ([py, "-c", SCAN, str(corpus), str(index)], None),
        "cli_unchanged": ([py, "-m", "microcond.cli.main", "scan", str(corpus), "--out", str(index)], None),
    }
    env = {"cpus": len(os.sched_getaffinity(0)), "device": "cpu", "python": sys.version.split()[0]}
    results = {}
    for name, (cmd, before) in cases.items():
        # Warm-up (page cache, bytecode); RUSAGE_CHILDREN is a running max, so each case's
        # peak is measured in a fresh helper process.
        if before:
            before()
        run(cmd)
        times, inner = [], []
        for _ in range(args.repeats):
            if before:
                before()
            seconds, out = run(cmd)
            times.append(seconds)
            if name.startswith("scan"):
                inner.append(float(out.split()[1]))
        peak = json.loads(subprocess.run(
            [py, "-c", "import json, resource, subprocess, sys; subprocess.run(sys.argv[1:], capture_output=True); "
             "print(json.dumps(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))", *cmd],
            capture_output=True, text=True, check=True).stdout)  # fmt: skip
        median = statistics.median(times)
        results[name] = median
        line = {"bench": "scan", "case": name, "files": args.files, "median_s": round(median, 4),
                "files_per_s": round(args.files / median), "runs_s": [round(t, 4) for t in times],
                "peak_rss_mib_largest_process": round(peak, 1), **env}
        if inner:
            line["in_process_median_s"] = round(statistics.median(inner), 4)
        print(json.dumps(line), flush=True)
    print(json.dumps({"bench": "scan", "case": "speedups", "files": args.files,
                      "first_scan_vs_pillow_loop": round(results["pillow_loop"] / results["scan_first"], 2),
                      "unchanged_rescan_vs_first_scan": round(results["scan_first"] / results["scan_unchanged"], 2),
                      **env}))  # fmt: skip
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
