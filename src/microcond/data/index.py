"""The scan index: a Parquet file, one row per file found, in walk order (columns :data:`COLUMNS`,
described in :mod:`microcond.data.scan`), with the scan's settings in its metadata. Written by
:func:`microcond.data.scan.scan`; read by :func:`read_index` (absolute paths) and, row batch by
row batch, by a rescan that reuses unchanged rows."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from microcond.data.walk import sort_key

INDEX_VERSION = "1"
COLUMNS = ("path", "height", "width", "format", "bytes", "mtime_ns", "status", "reason")
PARSER_VERSION = "2"  # bump when a parser changes what it records: rescans then redo every file


def index_schema(max_pixels: int) -> Any:
    import pyarrow as pa

    settings = json.dumps({"max_pixels": max_pixels, "parser": PARSER_VERSION})
    return pa.schema(
        [("path", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("format", pa.string()),
         ("bytes", pa.int64()), ("mtime_ns", pa.int64()), ("status", pa.string()), ("reason", pa.string())],
        metadata={"microcond.index": INDEX_VERSION, "microcond.scan": settings},
    )  # fmt: skip


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


class PriorIndex:
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
        columns: subset of :data:`COLUMNS` to return (default all).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"expected an index written by `microcond scan --out`, found no file at {path}")
    index_settings(path)
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
