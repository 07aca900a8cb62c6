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
"""

from __future__ import annotations

import collections
import errno
import json
import os
import stat
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

from microcond.data.headers import ACCEPTED_MODES, DEFAULT_MAX_PIXELS, Probe, _probe_file, probe_image  # noqa: F401 (part of scan's API)

IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png apng gif webp bmp dib tif tiff avif".split()
)
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
INDEX_VERSION = "1"
PARSER_VERSION = "2"  # bump when a parser changes what it records: rescans then redo every file
COLUMNS = ("path", "height", "width", "format", "bytes", "mtime_ns", "status", "reason")
_CHUNK = 512  # files per task sent to a worker
_ROW_GROUP = 65536



def _probe_many(items: list[tuple[str, int, int]], max_pixels: int) -> list[tuple[int | None, int | None, Probe | None]]:
    """Worker task: (path, previous bytes, previous mtime_ns; -1 when none) -> (bytes, mtime_ns,
    probe), probe None when bytes and mtime are unchanged. Never raises for one bad file."""
    out = []
    for path, old_bytes, old_mtime in items:
        try:
            if old_bytes >= 0:
                try:
                    st = os.stat(path)
                except OSError:
                    st = None  # the probe records why
                if st is not None and st.st_size == old_bytes and st.st_mtime_ns == old_mtime:
                    out.append((old_bytes, old_mtime, None))
                    continue
            out.append(_probe_file(path, max_pixels))
        except Exception as err:  # a parser bug must not stop the scan: recorded, listed
            out.append((None, None, Probe(None, None, None, "error", f"{type(err).__name__}: {err}")))
    return out


# ------------------------------------------------------------------------------- walk and index


_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _os_reason(err: OSError) -> str:
    """Why the walk cannot tell what an entry is, in words."""
    if err.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    return f"cannot read its file type: {err.strerror or err}"


class _Entry(NamedTuple):
    rel: str  # relative to the index's folder, "/"-separated: the stored path and sort key
    path: str  # as given to the OS
    status: str | None  # known without probing (bad name, broken link)
    reason: str | None


def _stored_name(name: str) -> tuple[str, bool]:
    """A name Parquet can hold (UTF-8); undecodable bytes are escaped and flagged."""
    try:
        name.encode("utf-8")
        return name, True
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace"), False


def _key(rel: str) -> list[str]:
    """Sort key of the walk and of the index: path components, so that a folder's files stay together."""
    return rel.split("/")


class _Walk:
    """Sorted, streaming walk of several roots, merged into one tree of paths relative to the index."""

    def __init__(self, roots: Sequence[str], index_dir: str, all_files: bool, skip: set[str]):
        self.all_files, self.skip, self.index_dir = all_files, skip, index_dir
        self.ignored, self.unreadable_folders = 0, []
        self.tree: dict[Any, Any] = {}  # component -> subtree; key None marks a root
        for root in roots:
            node = self.tree
            rel = os.path.relpath(root, index_dir).replace(os.sep, "/")
            for part in [] if rel == "." else rel.split("/"):
                node = node.setdefault(part, {})
            node[None] = True

    def __iter__(self) -> Iterator[_Entry]:
        return self._visit(self.index_dir, "", self.tree, True)

    def _visit(self, folder: str, prefix: str, virtual: dict, name_ok: bool) -> Iterator[_Entry]:
        items: list[tuple[str, bool, Any]] = [(name, True, sub) for name, sub in virtual.items() if name is not None]
        if virtual.get(None):
            try:
                with os.scandir(folder) as it:
                    items += [(*_stored_name(e.name), e) for e in it]
            except OSError as err:
                self.unreadable_folders.append((prefix or "./", err.strerror or str(err)))
        items.sort(key=lambda item: item[0])
        for name, ok, item in items:
            rel, good = prefix + name, name_ok and ok
            if isinstance(item, dict):  # a root or a folder on the way to one
                path = os.path.join(folder, name)
                if item.get(None) and not os.path.isdir(path):
                    yield self._entry(rel, path, good)  # a file named on the command line: any extension
                else:
                    yield from self._visit(path, rel + "/", item, good)
                continue
            try:
                is_folder = item.is_dir(follow_symlinks=False)
            except OSError as err:  # no type in the listing, and lstat refused
                yield _Entry(rel, item.path, "unreadable", _os_reason(err))
                continue
            if is_folder:
                yield from self._visit(item.path, rel + "/", {None: True}, good)
            elif not self.all_files and name[name.rfind(".") + 1 :].lower() not in IMAGE_EXTENSIONS:
                self.ignored += 1
            elif item.path not in self.skip:
                entry = self._listed(rel, item, good)
                if entry is None:  # a link to a folder: not followed
                    self.ignored += 1
                else:
                    yield entry

    @classmethod
    def _listed(cls, rel: str, item: os.DirEntry, name_ok: bool) -> _Entry | None:
        """A listed entry that is not a folder: a file to probe, a problem known from its type, or
        None for a link to a folder. Never raises: a bad entry must not stop the walk."""
        try:
            if item.is_file():  # file type from the folder listing: no stat here (workers stat)
                return cls._entry(rel, item.path, name_ok)
            if item.is_dir():
                return None
            mode = item.stat().st_mode  # follows links: a link to a FIFO is a FIFO
        except FileNotFoundError:
            return _Entry(rel, item.path, "unreadable", "broken symbolic link" if item.is_symlink() else "the file vanished during the scan")
        except OSError as err:  # a link loop, a link into a folder we may not search
            return _Entry(rel, item.path, "unreadable", _os_reason(err))
        kind = next((name for test, name in _SPECIAL_FILES if test(mode)), f"file type {stat.S_IFMT(mode):#o}")
        return _Entry(rel, item.path, "unreadable", f"{kind}, not a regular file")

    @staticmethod
    def _entry(rel: str, path: str, name_ok: bool) -> _Entry:
        if name_ok:
            return _Entry(rel, path, None, None)
        return _Entry(rel, path, "unreadable", "file name is not valid UTF-8: rename it")


def _schema(max_pixels: int) -> Any:
    import pyarrow as pa

    settings = json.dumps({"max_pixels": max_pixels, "parser": PARSER_VERSION})
    return pa.schema(
        [("path", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("format", pa.string()),
         ("bytes", pa.int64()), ("mtime_ns", pa.int64()), ("status", pa.string()), ("reason", pa.string())],
        metadata={"microcond.index": INDEX_VERSION, "microcond.scan": settings},
    )  # fmt: skip


def _check_index(path: Path) -> dict:
    """The scan settings stored in the index at ``path``; ValueError naming the file if it is not one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path} is not a readable index ({str(err).strip()}): delete it, or pass another --out to scan into") from None
    meta = schema.metadata or {}
    if meta.get(b"microcond.index") != INDEX_VERSION.encode():
        raise ValueError(
            f"expected a microcond index (version {INDEX_VERSION}) at {path}, found a Parquet file without one: "
            "pass the file `microcond scan --out` wrote, or another --out to scan into"
        )
    return json.loads(meta.get(b"microcond.scan", b"{}"))


class _Prior:
    """The previous index, read in row batches and merged with the (equally sorted) walk."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path, self.removed = path, 0
        self._rows = self._iter(pq.ParquetFile(path))
        self._row, self._key = self._next()

    def _iter(self, pf: Any) -> Iterator[tuple]:
        for batch in pf.iter_batches(batch_size=8192, columns=list(COLUMNS)):
            yield from zip(*(batch.column(c).to_pylist() for c in COLUMNS))

    def _next(self) -> tuple[tuple | None, list[str] | None]:
        row = next(self._rows, None)
        return row, None if row is None else _key(row[0])

    def take(self, key: list[str]) -> tuple | None:
        """The previous row of ``key``, if any; rows passed over were removed files."""
        while self._key is not None and self._key < key:
            self.removed += 1
            last = self._key
            self._row, self._key = self._next()
            if self._key is not None and self._key <= last:
                raise ValueError(f"expected {self.path} in scan order, found {self._row[0]!r} after "
                                 f"{'/'.join(last)!r}: delete it (or pick another --out) to scan from scratch")
        if self._key == key:
            row = self._row
            self._row, self._key = self._next()
            return row
        return None

    def finish(self) -> None:
        while self._key is not None:
            self.take([chr(0x10FFFF)])


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
        return text


def _import_pyarrow() -> None:
    import pyarrow.parquet  # noqa: F401  (imported while the workers parse: it takes ~0.2 s)


class _Pool:
    """Worker processes probing chunks of files; a crashing file is isolated and recorded."""

    def __init__(self, workers: int, max_pixels: int):
        import multiprocessing

        self.workers, self.max_pixels = workers, max_pixels
        # fork: workers start in milliseconds and need no `if __name__ == "__main__"` guard in the
        # caller's script. They run only this module's parsers and Pillow, never a library whose
        # threads (pyarrow's, torch's) may have held a lock at fork time.
        self.context = multiprocessing.get_context("fork")
        self.executor = self._start() if workers > 1 else None

    def _start(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(self.workers, mp_context=self.context)
        executor.submit(int).result()  # start the workers now, before the pyarrow import thread
        return executor

    def submit(self, items: list[tuple[str, int, int]]) -> Future | list:
        if self.executor is None or not items:
            return _probe_many(items, self.max_pixels)
        return self.executor.submit(_probe_many, items, self.max_pixels)

    def result(self, job: Future | list, items: list[tuple[str, int, int]]) -> list:
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
                    out.extend(self.executor.submit(_probe_many, [item], self.max_pixels).result())
                except BrokenProcessPool:
                    out.append((None, None, Probe(None, None, None, "error", "the scanner process crashed reading this file")))
            return out

    def _restart_if_broken(self) -> None:
        if getattr(self.executor, "_broken", False):
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = self._start()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def scan(
    roots: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    all_files: bool = False,
    progress: bool | None = None,
    list_first: int = 20,
) -> ScanSummary:
    """Scan files and folders into the Parquet index ``out``, reusing its unchanged rows.

    Args:
        roots: image files (any extension) and folders (walked; files with
            :data:`IMAGE_EXTENSIONS`, or every file with ``all_files``).
        max_pixels: images with more pixels get status ``too_large``.
        workers: processes probing files, at least 1 (default: every core); 1 probes in this process.
        progress: a tqdm bar on stderr (default: when stderr is a terminal).
        list_first: how many problems to keep in ``ScanSummary.first_problems``.
    """
    start = time.perf_counter()
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
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # per process: concurrent rescans never share it
    pool = _Pool(workers or len(os.sched_getaffinity(0)), max_pixels)
    importer = threading.Thread(target=_import_pyarrow, daemon=True)
    importer.start()
    summary = ScanSummary(out)
    walk = _Walk(paths, str(out.parent), all_files, {str(out), str(tmp)})
    writer, buffer = None, {c: [] for c in COLUMNS}
    prior = None
    bar = None
    if progress or (progress is None and sys.stderr.isatty()):
        from tqdm import tqdm

        bar = tqdm(unit=" files", desc="scan", file=sys.stderr, dynamic_ncols=True)
    try:
        if out.exists():
            importer.join()
            settings = _check_index(out)
            wanted = {"max_pixels": max_pixels, "parser": PARSER_VERSION}
            if settings == wanted:
                prior = _Prior(out)
            else:
                summary.full_rescan = f"settings changed from {settings} to {wanted}: every file is probed again"

        def flush(final: bool) -> None:
            nonlocal writer
            if len(buffer["path"]) < _ROW_GROUP and not final:
                return
            importer.join()
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = _schema(max_pixels)
            if writer is None:
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            writer.write_table(pa.Table.from_pydict(buffer, schema=schema))
            for column in buffer.values():
                column.clear()

        def finish(plan: list, job: Any, items: list[tuple[str, int, int]]) -> None:
            results = iter(pool.result(job, items))
            for entry, old in plan:
                if entry.status is not None:  # known from the walk: nothing to probe
                    row = (entry.rel, None, None, None, None, None, entry.status, entry.reason)
                    count = "new" if old is None else "changed"
                else:
                    nbytes, mtime, p = next(results)
                    if p is None:
                        row, count = old, "unchanged"
                    else:
                        row = (entry.rel, p.height, p.width, p.format, nbytes, mtime, p.status, p.reason)
                        count = "new" if old is None else "changed"
                setattr(summary, count, getattr(summary, count) + 1)
                for column, value in zip(COLUMNS, row):
                    buffer[column].append(value)
                if row[6] != "ok":
                    summary.problems[row[6]] += 1
                    if len(summary.first_problems) < list_first:
                        summary.first_problems.append((entry.path, row[6], row[7]))
            summary.found += len(plan)
            if bar is not None:
                bar.update(len(plan))
            flush(False)

        pending: collections.deque = collections.deque()

        def submit(chunk: list[_Entry]) -> None:
            plan, items = [], []
            for entry in chunk:
                old = prior.take(_key(entry.rel)) if prior is not None else None
                plan.append((entry, old))
                if entry.status is None:
                    reusable = old is not None and old[4] is not None and old[6] not in RETRY_STATUSES
                    items.append((entry.path, old[4], old[5]) if reusable else (entry.path, -1, -1))
            pending.append((plan, pool.submit(items), items))
            while len(pending) > 2 * pool.workers:
                finish(*pending.popleft())

        chunk: list[_Entry] = []
        for entry in walk:
            chunk.append(entry)
            if len(chunk) == _CHUNK:
                submit(chunk)
                chunk = []
        submit(chunk)
        while pending:
            finish(*pending.popleft())
        if prior is not None:
            prior.finish()
            summary.removed = prior.removed
        flush(True)
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        pool.close()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    summary.ignored, summary.unreadable_folders = walk.ignored, walk.unreadable_folders
    summary.seconds = time.perf_counter() - start
    return summary


def read_index(path: str | os.PathLike, *, usable: bool | None = None, columns: Sequence[str] | None = None) -> Any:
    """The index as a ``pyarrow.Table`` with absolute paths.

    Args:
        usable: True keeps the ``ok`` rows, False the problems, None every row.
        columns: subset of :data:`COLUMNS` to return (default all).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"expected an index written by `microcond scan --out`, found no file at {path}")
    _check_index(path)
    columns = list(columns or COLUMNS)
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise ValueError(f"read_index: expected columns among {COLUMNS}, got {unknown}")
    table = pq.read_table(path, columns=sorted(set(columns) | {"status"}, key=COLUMNS.index))
    if usable is not None:
        is_ok = pc.equal(table["status"], "ok")
        table = table.filter(is_ok if usable else pc.invert(is_ok))
    if "path" in columns:
        base = os.path.abspath(path.parent)
        rel = table["path"]
        if pc.any(pc.starts_with(rel, "../")).as_py():
            absolute = pa.array([os.path.normpath(os.path.join(base, p)) for p in rel.to_pylist()], pa.string())
        else:
            absolute = pc.binary_join_element_wise(base.rstrip(os.sep), rel, os.sep)
        table = table.set_column(table.schema.get_field_index("path"), "path", absolute)
    return table.select(columns)
