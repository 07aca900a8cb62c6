"""Scan: every image's original size from its header, EXIF-aware, into a Parquet index.

The index (one row per file found, in walk order) has the columns
``path`` (relative to the index's folder, ``/``-separated), ``height``, ``width`` (after EXIF
orientation: the shape ``ImageOps.exif_transpose`` gives; null when unknown), ``format``
(Pillow's name), ``bytes``, ``mtime_ns`` (null when the file cannot be read), ``status`` (``"ok"`` or one of :data:`PROBLEMS`) and
``reason`` (a sentence for problems, null for ``ok``). Read it with :func:`read_index`, which
returns absolute paths: ``read_index("index.parquet", usable=True)`` gives the rows a loader may
use.

Headers of JPEG, PNG, GIF, WebP, BMP and TIFF are parsed by :mod:`microcond.data.headers`,
reading a few KiB per file; anything unusual and the other formats go to ``PIL.Image.open``.
Orientation follows Pillow exactly: the EXIF tag in IFD0, else XMP ``tiff:Orientation``.

What a header scan calls ``truncated`` (the loader counts the decode failures it still meets):
a header that ends early; a JPEG without an EOI marker in its last 4 KiB (also true of files
with large data appended, e.g. motion photos: they are listed, check them); a PNG without an IEND
chunk in its last 4 KiB; a GIF whose last byte (after zero padding) is not the trailer ``;``;
a WebP shorter than its RIFF size; an uncompressed BMP shorter than its pixel array; a TIFF
shorter than the end of its last strip. Files read by Pillow alone are not checked. PNG ``eXIf`` chunks after the image data are seen
when they lie in the last 4 KiB.

Accepted modes (:data:`ACCEPTED_MODES`) are those Pillow converts to RGB; 8-bit JPEG only.
Rescans are incremental: rows of files whose ``bytes`` and ``mtime_ns`` are unchanged are reused
(not those whose problem may be passing, ``unreadable`` and ``error``), by merging the sorted
walk with the previous index, so memory does not grow with the number of files. Symbolic links
to files are followed, links to folders are not. Entries the walk cannot use are rows with status
``unreadable`` and a reason, never a reason to stop: broken links and link loops, FIFOs, sockets
and devices, entries whose type the system refuses to tell (permission denied). A header claiming
a side below 1 or above ``headers.MAX_SIDE`` pixels is ``bad_header``, its size not stored.

``effective=True`` (``--effective``) also measures each usable image's effective size in the
workers: the columns :data:`EFFECTIVE_COLUMNS`, described in :mod:`microcond.data.index`.
"""

from __future__ import annotations

import collections
import itertools
import os
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from microcond.data.headers import ACCEPTED_MODES, DEFAULT_MAX_PIXELS, Probe, _probe_file, probe_image  # noqa: F401 (part of scan's API)
from microcond.data.index import COLUMNS, EFFECTIVE_COLUMNS, INDEX_VERSION, PARSER_VERSION, PriorIndex, effective_columns, index_schema, index_settings, read_index  # noqa: F401 (read_index, INDEX_VERSION: part of scan's API)
from microcond.data.walk import IMAGE_EXTENSIONS, Entry, Walk, sort_key  # noqa: F401 (IMAGE_EXTENSIONS: part of scan's API)

PROBLEMS = {
    "zero_bytes": "the file is empty",
    "unreadable": "the operating system refused to read it (permission, I/O error, bad name, link loop, not a regular file)",
    "not_image": "no image format recognised (by this scan or by Pillow)",
    "bad_header": "a known format with an invalid header or EXIF block",
    "truncated": "the file ends before its header or end marker",
    "bad_mode": "a pixel layout the loader cannot convert to RGB",
    "too_large": "more pixels than --max-pixels (decompression-bomb limit)",
    "error": "unexpected error in the scanner (please report it)",
}
RETRY_STATUSES = frozenset({"unreadable", "error"})  # may pass: never reused on rescan
_CHUNK = 512  # files per task sent to a worker
_EFFECTIVE_CHUNK = 16  # files per task when measuring effective sizes (tens of ms each)
_ROW_GROUP = 65536
_NOT_MEASURED = (None,) * len(EFFECTIVE_COLUMNS)

Item = tuple[str, int, int, "tuple[int, int] | None"]  # path, old bytes, old mtime_ns (-1: none), size to measure


def _probe_many(items: list[Item], max_pixels: int, effective: bool, max_grids: int | None = None) -> list[tuple[int | None, int | None, Probe | None, tuple | None]]:
    """Worker task: items -> (bytes, mtime_ns, probe, effective columns); probe None when bytes and
    mtime are unchanged, effective columns None when not measured. Never raises for one bad file."""
    out = []
    for path, old_bytes, old_mtime, old_size in items:
        try:
            if old_bytes >= 0:
                try:
                    st = os.stat(path)
                except OSError:
                    st = None  # the probe records why
                if st is not None and st.st_size == old_bytes and st.st_mtime_ns == old_mtime:
                    out.append((old_bytes, old_mtime, None, effective_columns(path, *old_size, max_grids) if old_size else None))
                    continue
            nbytes, mtime, probe = _probe_file(path, max_pixels)
            measured = effective_columns(path, probe.height, probe.width, max_grids) if effective and probe.status == "ok" else None
            out.append((nbytes, mtime, probe, measured))
        except Exception as err:  # a parser bug must not stop the scan: recorded, listed
            out.append((None, None, Probe(None, None, None, "error", f"{type(err).__name__}: {err}"), None))
    return out


@dataclass
class ScanSummary:
    """Counts of one scan; ``found == usable + sum(problems.values())``."""

    out: Path
    found: int = 0
    problems: collections.Counter = field(default_factory=collections.Counter)
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    ignored: int = 0
    unreadable_folders: list[tuple[str, str]] = field(default_factory=list)
    first_problems: list[tuple[str, str, str]] = field(default_factory=list)
    full_rescan: str | None = None
    effective: bool = False
    measured: int = 0  # effective sizes measured by this scan (the others reused)
    not_measured: int = 0  # usable files whose effective size could not be measured
    first_not_measured: list[tuple[str, str]] = field(default_factory=list)
    effective_note: str | None = None
    seconds: float = 0.0

    @property
    def usable(self) -> int:
        return self.found - sum(self.problems.values())

    def line(self) -> str:
        kinds = ", ".join(f"{n} {s}" for s, n in sorted(self.problems.items(), key=lambda kv: -kv[1]))
        rate = self.found / self.seconds if self.seconds > 0 else 0.0
        text = (f"scanned {self.found} files: {self.usable} usable, {sum(self.problems.values())} unusable"
                f"{f' ({kinds})' if kinds else ''} -> {self.out} [new {self.new}, changed {self.changed}, "
                f"unchanged {self.unchanged}, removed {self.removed}] in {self.seconds:.2f} s ({rate:,.0f} files/s)")
        if self.ignored:
            text += f"; ignored {self.ignored} other files (not image extensions; --all-files scans them)"
        if self.effective:
            text += (f"; effective size measured for {self.measured} files"
                     f"{f', {self.not_measured} usable files not measurable (effective_reason)' if self.not_measured else ''}")
        return text


def _import_pyarrow() -> None:
    import pyarrow.parquet  # noqa: F401  (imported while the workers parse: it takes ~0.2 s)


class _Pool:
    """Worker processes probing chunks of files; a crashing file is isolated and recorded."""

    def __init__(self, workers: int, max_pixels: int, effective: bool, max_grids: int | None = None):
        import multiprocessing

        self.workers, self.max_pixels, self.effective, self.max_grids = workers, max_pixels, effective, max_grids
        # fork: workers start in milliseconds and need no `if __name__ == "__main__"` guard in the
        # caller's script. They run only this module's parsers and Pillow, never a library whose
        # threads (pyarrow's, torch's) may have held a lock at fork time.
        self.context = multiprocessing.get_context("fork")
        self.executor = self._start() if workers > 1 else None

    def _start(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(self.workers, mp_context=self.context)
        executor.submit(int).result()  # start the workers now, before the pyarrow import thread
        return executor

    def submit(self, items: list[Item]) -> Future | list:
        if self.executor is None or not items:
            return _probe_many(items, self.max_pixels, self.effective, self.max_grids)
        return self.executor.submit(_probe_many, items, self.max_pixels, self.effective, self.max_grids)

    def result(self, job: Future | list, items: list[Item]) -> list:
        from concurrent.futures.process import BrokenProcessPool

        if isinstance(job, list):
            return job
        try:
            return job.result()
        except BrokenProcessPool:  # a C library crashed on some file: find it, one file per task
            out = []
            for item in items:
                self._restart_if_broken()
                try:
                    out.extend(self.executor.submit(_probe_many, [item], self.max_pixels, self.effective, self.max_grids).result())
                except BrokenProcessPool:
                    out.append((None, None, Probe(None, None, None, "error", "the scanner process crashed reading this file"), None))
            return out

    def _restart_if_broken(self) -> None:
        if getattr(self.executor, "_broken", False):
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = self._start()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def _scan_targets(roots: Sequence[str | os.PathLike], out: str | os.PathLike, max_pixels: int, workers: int | None) -> tuple[list[str], Path]:
    """The checked arguments of :func:`scan`: absolute roots (none inside another) and the index path."""
    if not roots:
        raise ValueError("scan: expected at least one file or folder to scan, got none")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"scan: --max-pixels must be a positive integer, got {max_pixels!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"scan: --workers must be a positive number of processes (omit it for every core), got {workers!r}")
    paths = sorted({os.path.abspath(r) for r in roots})
    for p in paths:
        if not os.path.exists(p):
            raise ValueError(f"scan: expected an existing file or folder, found nothing at {p}: check the PATH arguments")
    nested = lambda p, q: p != q and (q == os.path.dirname(q) or p.startswith(q.rstrip(os.sep) + os.sep))  # noqa: E731
    paths = [p for p in paths if not any(nested(p, q) for q in paths)]
    out = Path(os.path.abspath(out))
    if out.is_dir():
        raise ValueError(f"scan: --out must be a Parquet file path, found a folder at {out}: add a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    return paths, out


class _IndexWriter:
    """The new index: rows buffered into row groups, written under a temporary name (per process,
    so concurrent rescans never share it) and renamed over ``out`` only when complete."""

    def __init__(self, out: Path, max_pixels: int, estimator: str | None, importer: threading.Thread):
        """``estimator``: what measures the effective sizes (:func:`microcond.data.effective.estimator_id`); None: not measured."""
        self.out, self.max_pixels, self.estimator, self.importer = out, max_pixels, estimator, importer
        self.tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        self.writer: Any = None
        self.columns = COLUMNS + (EFFECTIVE_COLUMNS if estimator is not None else ())
        self.buffer: dict[str, list] = {c: [] for c in self.columns}

    def add(self, row: tuple) -> None:
        for column, value in zip(self.columns, row, strict=True):
            self.buffer[column].append(value)
        if len(self.buffer["path"]) >= _ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        self.importer.join()
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = index_schema(self.max_pixels, self.estimator)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        self.writer.write_table(pa.Table.from_pydict(self.buffer, schema=schema))
        for column in self.buffer.values():
            column.clear()

    def commit(self) -> None:
        self._flush()  # also writes the schema of an index without rows
        self.writer.close()
        self.writer = None
        os.replace(self.tmp, self.out)

    def discard(self) -> None:
        """After a failure: nothing of the new index stays (a committed one is already renamed)."""
        if self.writer is not None:
            self.writer.close()
        if self.tmp.exists():
            self.tmp.unlink()


def _prior_index(out: Path, max_pixels: int, estimator: str | None, importer: threading.Thread, summary: "ScanSummary") -> PriorIndex | None:
    """The previous index at ``out`` to reuse rows from, if it was written with the same header
    settings; its rows carry effective columns when they may be reused too (same estimator and
    budget, ``estimator``: :func:`microcond.data.effective.estimator_id`; None: not measured)."""
    effective = estimator is not None
    if not out.exists():
        return None
    importer.join()
    settings = index_settings(out)
    measured = settings.pop("effective", None)
    wanted = {"max_pixels": max_pixels, "parser": PARSER_VERSION}
    if settings != wanted:
        summary.full_rescan = f"settings changed from {settings} to {wanted}: every file is probed again"
        return None
    if measured is not None and not effective:
        summary.effective_note = "the index had effective sizes; this scan without --effective leaves them out"
    elif measured not in (None, estimator) and effective:
        summary.effective_note = f"effective sizes came from estimator {measured}, this is {estimator}: every file is measured again"
    return PriorIndex(out, effective=effective and measured == estimator)


def _plan(chunk: list[Entry], prior: PriorIndex | None, effective: bool) -> tuple[list[tuple[Entry, tuple | None]], list[Item]]:
    """Each entry with its previous row, and the files to probe: (path, bytes, mtime, size) of the
    previous row when it may be reused unchanged (size: to measure, when its row has no effective
    columns yet), else (path, -1, -1, None)."""
    plan, items = [], []
    for entry in chunk:
        old = prior.take(sort_key(entry.rel)) if prior is not None else None
        plan.append((entry, old))
        if entry.status is None:
            if old is not None and old[4] is not None and old[6] not in RETRY_STATUSES:
                unmeasured = effective and old[6] == "ok" and len(old) == len(COLUMNS)
                items.append((entry.path, old[4], old[5], (old[1], old[2]) if unmeasured else None))
            else:
                items.append((entry.path, -1, -1, None))
    return plan, items


def _rows(plan: list[tuple[Entry, tuple | None]], results: Iterator, effective: bool) -> Iterator[tuple[Entry, tuple, str, bool]]:
    """(entry, its index row, new | changed | unchanged, effective size measured now) from a plan
    and its probe results."""
    blank = _NOT_MEASURED if effective else ()
    for entry, old in plan:
        if entry.status is not None:  # known from the walk: nothing to probe
            row = (entry.rel, None, None, None, None, None, entry.status, entry.reason) + blank
            yield entry, row, "new" if old is None else "changed", False
            continue
        nbytes, mtime, p, measured = next(results)
        if p is None:
            kept = old if len(old) == len(COLUMNS) + len(blank) else old[: len(COLUMNS)] + blank
            yield entry, kept if measured is None else old[: len(COLUMNS)] + measured, "unchanged", measured is not None
        else:
            row = (entry.rel, p.height, p.width, p.format, nbytes, mtime, p.status, p.reason)
            yield entry, row + (measured or blank), "new" if old is None else "changed", measured is not None


def scan(
    roots: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    all_files: bool = False,
    progress: bool | None = None,
    list_first: int = 20,
    effective: bool = False,
    max_grids: int | None = None,
) -> ScanSummary:
    """Scan files and folders into the Parquet index ``out``, reusing its unchanged rows.

    Walk (sorted, streaming) -> plan each chunk against the previous index -> probe headers in
    worker processes (a few chunks in flight) -> merge rows in walk order into the new index.

    Args:
        roots: image files (any extension) and folders (walked; files with
            :data:`IMAGE_EXTENSIONS`, or every file with ``all_files``).
        max_pixels: images with more pixels get status ``too_large``.
        workers: processes probing files, at least 1 (default: every core); 1 probes in this process.
        progress: a tqdm bar on stderr (default: when stderr is a terminal).
        list_first: how many problems to keep in ``ScanSummary.first_problems``.
        effective: also measure each usable image's effective size (decodes a band of it).
        max_grids: with ``effective``, the most upscale grids fitted per image (the work,
            :func:`microcond.data.effective.estimate`; default no limit). Part of the index's
            settings: a rescan with another budget measures every file again.
    """
    from microcond.data.effective import check_max_grids, estimator_id

    check_max_grids(max_grids)
    if max_grids is not None and not effective:
        raise ValueError("max_grids bounds the effective-size measure: give effective=True too")
    start = time.perf_counter()
    paths, out = _scan_targets(roots, out, max_pixels, workers)
    pool = _Pool(workers or len(os.sched_getaffinity(0)), max_pixels, effective, max_grids)
    estimator = estimator_id(max_grids) if effective else None
    importer = threading.Thread(target=_import_pyarrow, daemon=True)
    importer.start()
    summary = ScanSummary(out, effective=effective)
    index = _IndexWriter(out, max_pixels, estimator, importer)
    walk = Walk(paths, str(out.parent), all_files, {str(out), str(index.tmp)})
    bar = None
    if progress or (progress is None and sys.stderr.isatty()):
        from tqdm import tqdm

        bar = tqdm(unit=" files", desc="scan", file=sys.stderr, dynamic_ncols=True)

    def merge(plan: list, job: Any, items: list[Item]) -> None:
        for entry, row, count, measured in _rows(plan, iter(pool.result(job, items)), effective):
            setattr(summary, count, getattr(summary, count) + 1)
            summary.measured += measured
            index.add(row)
            if row[6] != "ok":
                summary.problems[row[6]] += 1
                if len(summary.first_problems) < list_first:
                    summary.first_problems.append((entry.path, row[6], row[7]))
            elif effective and row[-1] is not None:
                summary.not_measured += 1
                if len(summary.first_not_measured) < list_first:
                    summary.first_not_measured.append((entry.path, row[-1]))
        summary.found += len(plan)
        if bar is not None:
            bar.update(len(plan))

    try:
        prior = _prior_index(out, max_pixels, estimator, importer, summary)
        in_flight: collections.deque = collections.deque()
        walked = iter(walk)
        while chunk := list(itertools.islice(walked, _EFFECTIVE_CHUNK if effective else _CHUNK)):
            plan, items = _plan(chunk, prior, effective)
            in_flight.append((plan, pool.submit(items), items))
            while len(in_flight) > 2 * pool.workers:
                merge(*in_flight.popleft())
        while in_flight:
            merge(*in_flight.popleft())
        if prior is not None:
            prior.finish()
            summary.removed = prior.removed
        index.commit()
    finally:
        pool.close()
        if bar is not None:
            bar.close()
        index.discard()
    summary.ignored, summary.unreadable_folders = walk.ignored, walk.unreadable_folders
    summary.seconds = time.perf_counter() - start
    return summary


