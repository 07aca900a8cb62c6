"""The scan index: a Parquet file, one row per file found, in walk order (columns :data:`COLUMNS`,
plus :data:`EFFECTIVE_COLUMNS` when scanned with ``--effective``; described in
:mod:`microcond.data.scan`), with the scan's settings in its metadata (``effective``: the
estimator version, present only then). Written by :func:`microcond.data.scan.scan`; read by
:func:`read_index` (absolute paths) and, row batch by row batch, by a rescan that reuses
unchanged rows.

Effective columns (:mod:`microcond.data.effective`, measured in the scan's workers from a bounded
band of each usable image): ``effective_height``, ``effective_width`` (after orientation, at most
``height``/``width``), ``effective_confidence`` (0..1), ``jpeg_quality`` (IJG 1-100, null if not
JPEG) and ``effective_reason`` (why a usable file could not be measured: its row stays usable, the
other effective columns null). Unchanged files keep their measures; an index scanned without them,
or by another estimator version, is measured on the next ``--effective`` rescan with its header
rows reused. A scan without ``--effective`` writes an index without these columns."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from microcond.data.walk import sort_key

INDEX_VERSION = "1"
COLUMNS = ("path", "height", "width", "format", "bytes", "mtime_ns", "status", "reason")
EFFECTIVE_COLUMNS = ("effective_height", "effective_width", "effective_confidence", "jpeg_quality", "effective_reason")
PARSER_VERSION = "2"  # bump when a parser changes what it records: rescans then redo every file


def index_schema(max_pixels: int, effective: str | None = None) -> Any:
    """The index's Arrow schema; ``effective``: the estimator (its version and budget) when the scan measures
    effective sizes (adds :data:`EFFECTIVE_COLUMNS`), else None."""
    import pyarrow as pa

    settings = {"max_pixels": max_pixels, "parser": PARSER_VERSION}
    fields = [("path", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("format", pa.string()),
              ("bytes", pa.int64()), ("mtime_ns", pa.int64()), ("status", pa.string()), ("reason", pa.string())]
    if effective is not None:
        settings["effective"] = effective
        fields += [("effective_height", pa.int32()), ("effective_width", pa.int32()),
                   ("effective_confidence", pa.float32()), ("jpeg_quality", pa.int8()), ("effective_reason", pa.string())]
    return pa.schema(fields, metadata={"microcond.index": INDEX_VERSION, "microcond.scan": json.dumps(settings)})  # fmt: skip


def index_settings(path: Path) -> dict:
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


def effective_columns(path: str, height: int, width: int, max_grids: int | None = None) -> tuple:
    """The :data:`EFFECTIVE_COLUMNS` of one usable file whose header gave (height, width), measured
    fitting at most ``max_grids`` grids; a failure is a reason in the last column, never an
    exception (a scan worker calls it)."""
    from microcond.data.effective import estimate

    try:
        e = estimate(path, max_grids=max_grids)
    except ValueError as err:
        return (None, None, None, None, str(err).removeprefix(f"{path}: "))
    except Exception as err:  # an estimator bug must not stop the scan: recorded, listed
        return (None, None, None, None, f"estimator error ({type(err).__name__}: {err})")
    if e.file_size == (width, height) != (height, width):  # orientation read differently: follow the header
        return (e.width, e.height, e.confidence, e.jpeg_quality, None)
    if e.file_size != (height, width):
        return (None, None, None, e.jpeg_quality, f"decoded size {e.file_size} differs from the header's {(height, width)}")
    return (e.height, e.width, e.confidence, e.jpeg_quality, None)


class PriorIndex:
    """The previous index, read in row batches and merged with the (equally sorted) walk."""

    def __init__(self, path: Path, effective: bool = False):
        """``effective``: rows carry the previous :data:`EFFECTIVE_COLUMNS` (else they are cut)."""
        import pyarrow.parquet as pq

        self.path, self.removed = path, 0
        self._rows = self._iter(pq.ParquetFile(path), COLUMNS + (EFFECTIVE_COLUMNS if effective else ()))
        self._row, self._key = self._next()

    def _iter(self, pf: Any, columns: tuple[str, ...]) -> Iterator[tuple]:
        for batch in pf.iter_batches(batch_size=8192, columns=list(columns)):
            yield from zip(*(batch.column(c).to_pylist() for c in columns))

    def _next(self) -> tuple[tuple | None, list[str] | None]:
        row = next(self._rows, None)
        return row, None if row is None else sort_key(row[0])

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


def read_index(path: str | os.PathLike, *, usable: bool | None = None, columns: Sequence[str] | None = None) -> Any:
    """The index as a ``pyarrow.Table`` with absolute paths.

    Args:
        usable: True keeps the ``ok`` rows, False the problems, None every row.
        columns: subset of :data:`COLUMNS` (and of :data:`EFFECTIVE_COLUMNS` when the index was
            scanned with ``--effective``) to return (default all there are).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"expected an index written by `microcond scan --out`, found no file at {path}")
    present = COLUMNS + (EFFECTIVE_COLUMNS if "effective" in index_settings(path) else ())
    columns = list(columns or present)
    if missing := sorted(set(columns) & set(EFFECTIVE_COLUMNS) - set(present)):
        raise ValueError(f"{path} has no effective sizes ({', '.join(missing)}): scan again with "
                         "`microcond scan --effective` to measure them")
    if unknown := sorted(set(columns) - set(present)):
        raise ValueError(f"read_index: expected columns among {present}, got {unknown}")
    table = pq.read_table(path, columns=sorted(set(columns) | {"status"}, key=present.index))
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


def read_sizes(path: str | os.PathLike, effective: bool = True) -> dict[str, tuple[int, int]]:
    """(h, w) after EXIF orientation of each usable file of a scan index, by absolute path: the
    effective size (the size before any upscaling, ``microcond scan --effective``) where it was
    measured and ``effective`` is set, else the file's. Feed it to
    :class:`microcond.data.CropStep` (``sizes=``) to condition on effective sizes."""
    columns = ["path", "height", "width"] + (["effective_height", "effective_width"] if effective else [])
    table = read_index(path, usable=True, columns=columns).to_pydict()
    sizes = {}
    for k, name in enumerate(table["path"]):
        h, w = table["height"][k], table["width"][k]
        if effective and table["effective_height"][k] is not None and table["effective_width"][k] is not None:
            h, w = table["effective_height"][k], table["effective_width"][k]
        sizes[name] = (int(h), int(w))
    return sizes

