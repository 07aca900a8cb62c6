"""Commands on image data: ``shard``, ``scan``, ``report``."""

from __future__ import annotations

import argparse

from microcond.cli.common import COUNT, integer, subparser

# ---------------------------------------------------------------------------------------- shard


def add_shard(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "shard",
        "Write WebDataset tar shards from an image folder: each sample is the image file's bytes plus "
        "JSON with original_height, original_width (after EXIF orientation) and label.",
        [
            "microcond shard data/demo/train --out shards/train",
            "microcond shard photos --index photos.parquet --out shards/photos --max-count 5000",
            "microcond shard photos --out shards/big --min-original-edge 512",
        ],
    )
    p.add_argument("folder", metavar="DIR", help="image folder (labels from DIR/metadata.jsonl when present)")
    p.add_argument("--index", help="index from `microcond scan` (default: scan DIR into the cache folder)")
    p.add_argument("--out", required=True, metavar="SHARDDIR", help="empty or new folder for shard-NNNNNN.tar")
    p.add_argument("--max-count", type=COUNT, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--min-original-edge", type=integer(0, 1 << 20, "a side in px"), default=0, help="leave out images with a shorter original edge (default 0)")
    p.add_argument("--cache", help="folder for the scan index when --index is not given (default $MICROCOND_CACHE)")
    p.set_defaults(run=run_shard)


def run_shard(args: argparse.Namespace) -> int:
    from microcond.data.shards import write_shards
    from microcond.data.source import ImageSource, default_cache_dir

    source = ImageSource.from_folder(args.folder, args.index, min_original_edge=args.min_original_edge,
                                     cache_dir=args.cache or default_cache_dir())
    shards = write_shards(source, args.out, max_count=args.max_count)
    print(f"wrote {len(source)} images into {len(shards)} shards in {args.out}; "
          f"{len(source.skipped)} skipped, {source.dropped_small} below --min-original-edge")
    for name, reason in source.skipped:
        print(f"skipped {name}: {reason}")
    return 0


# ----------------------------------------------------------------------------------------- scan


def add_scan(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "scan",
        "Record every image's original size (height, width after EXIF orientation) from its header, "
        "into a Parquet index; bad files are listed with their reason. Rescans redo changed files only. "
        "--effective also measures the size each image had before it was upscaled, and its JPEG quality.",
        [
            "microcond scan photos --out photos/index.parquet",
            "microcond scan photos more/extra.jpg --out index.parquet --list-problems",
            "microcond scan photos --out index.parquet --max-pixels 50000000 --workers 4",
            "microcond scan photos --out photos/index.parquet --effective",
            "microcond scan crawl --out crawl/index.parquet --effective --max-grids 300",
        ],
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image folders (walked) and image files")
    p.add_argument("--out", required=True, help="index file to write (or update, if it exists)")
    p.add_argument("--max-pixels", type=integer(1, 2**40, "a pixel count"), default=None,
                   help="images with more pixels are 'too_large' (default 178956970, Pillow's bomb limit)")
    p.add_argument("--workers", type=integer(1, 1024, "a number of processes"), default=None, help="processes reading headers (default: every core)")
    p.add_argument("--all-files", action="store_true", help="probe every file, not only image extensions")
    p.add_argument("--list-problems", action="store_true", help="print every unusable file (default: the first 20)")
    p.add_argument("--effective", action="store_true",
                   help="also measure effective sizes (before upscaling) and JPEG quality: decodes part of each image")
    p.add_argument("--max-grids", type=integer(1, 10**6, "a number of grids"), default=None,
                   help="with --effective: the most upscale grids fitted per image, about 0.3 ms each on one core (default: no "
                        "limit; 400-1,000 on a photograph). Bounds the cost; a file whose tests stop there keeps the verdict "
                        "reached, a native one at confidence 0")
    p.set_defaults(run=run_scan)


def run_scan(args: argparse.Namespace) -> int:
    from microcond.data.scan import read_index, scan

    if args.max_grids is not None and not args.effective:
        raise ValueError("--max-grids bounds the effective-size measure: give --effective too")
    limit = {} if args.max_pixels is None else {"max_pixels": args.max_pixels}
    summary = scan(args.paths, args.out, workers=args.workers, all_files=args.all_files, effective=args.effective,
                   max_grids=args.max_grids, progress=None, **limit)
    for note in (summary.full_rescan, summary.effective_note):
        if note:
            print(f"note: {note}")
    for folder, reason in summary.unreadable_folders:
        print(f"warning: cannot list folder {folder}: {reason}")
    problems = summary.first_problems
    if args.list_problems:
        table = read_index(args.out, usable=False, columns=["path", "status", "reason"]).to_pydict()
        problems = list(zip(table["path"], table["status"], table["reason"]))
    for path, status, reason in problems:
        print(f"{status:<11} {path}: {reason}")
    shown, total = len(problems), sum(summary.problems.values())
    if shown < total:
        print(f"... {total - shown} more unusable files: --list-problems prints all (each row of the index has its reason)")
    unmeasured = summary.first_not_measured
    if args.list_problems and args.effective:
        table = read_index(args.out, usable=True, columns=["path", "effective_reason"]).to_pydict()
        unmeasured = [(p, r) for p, r in zip(table["path"], table["effective_reason"]) if r is not None]
    for path, reason in unmeasured:
        print(f"{'effective':<11} {path}: {reason} (usable; effective size unknown)")
    if len(unmeasured) < summary.not_measured:
        print(f"... {summary.not_measured - len(unmeasured)} more files without an effective size: --list-problems prints all")
    print(summary.line())
    return 0


# --------------------------------------------------------------------------------------- report


def add_report(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "report",
        "The paper's Fig. 2 for your data: size histogram, what a minimum-edge filter would discard, "
        "aspect ratios and bucket fill, printed and written as Markdown plus PNGs.",
        [
            "microcond report photos/index.parquet --out report/",
            "microcond report index.parquet --out report/ --buckets base:512",
        ],
    )
    p.add_argument("index", metavar="INDEX", help="index written by `microcond scan`")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md and the PNGs")
    p.add_argument("--min-edges", nargs="+", type=int, default=[64, 128, 256, 512, 1024], metavar="N",
                   help="thresholds of the minimum-size table (default: the paper's 64 128 256 512 1024)")
    p.add_argument("--buckets", default="sdxl",
                   help="bucket set to fill: sdxl, base:1024, base:512:step=32, 512x512,512x768 (default sdxl)")
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from microcond.data.report import write_report

    print(write_report(args.index, args.out, buckets=args.buckets, min_edges=args.min_edges))
    return 0
