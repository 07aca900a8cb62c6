"""Memory-mapped ragged arrays: the one storage of the pixel, latent and text caches.

A cache folder ``CACHE/<kind>-<key>/`` holds rows of different shapes back to back in one flat
``values.npy`` (memory-mapped: loader workers share the page cache instead of a copy each),
``offsets.npy`` (N+1,) and ``shapes.npy`` (N, ndim) index it, further whole arrays may sit beside
it (``<name>.npy``), and ``meta.json`` (the key, the rows that failed with their reasons, and
what the cache kind adds) is written last: it marks a complete folder.

A folder is built under a private name and renamed into place (:func:`staged`), so a
half-written cache is never found under its name; folders left by killed builds are removed by
the next build in the same cache folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

# A folder being built: ".<name>.tmp<pid>", whatever the cache kind.
_STAGING_RE = re.compile(r"^\.[\w.-]+\.tmp(\d+)$")
MARKER = "meta.json"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(cache_dir: Path) -> list[Path]:
    """Delete the staging folders of builds whose process no longer runs (killed mid-build)."""
    stale = [p for p in cache_dir.iterdir() if p.is_dir() and (m := _STAGING_RE.match(p.name)) and int(m[1]) != os.getpid() and not _running(int(m[1]))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


@contextmanager
def staged(cache_dir: str | Path, name: str, marker: str = MARKER) -> Iterator[Path]:
    """Build ``cache_dir/name`` in a private folder that is renamed into place when the body ends.

    The body writes ``marker`` last; a failed body (disk full, Ctrl-C) removes its folder, and
    folders left by killed builds go first.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(cache_dir)
    tmp = cache_dir / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, cache_dir / name)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (cache_dir / name / marker).is_file():
            raise  # else another process finished the same cache first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class RaggedWriter:
    """Fills a ragged-array folder being built (:meth:`RaggedArrays.create`)."""

    def __init__(self, folder: Path, shapes: np.ndarray, dtype: np.dtype) -> None:
        self.folder, self.shapes = folder, shapes
        self.offsets = np.concatenate([[0], np.cumsum(shapes.prod(axis=1))]).astype(np.int64)
        self.values = np.lib.format.open_memmap(folder / "values.npy", mode="w+", dtype=dtype, shape=(int(self.offsets[-1]),))
        self.failures: list[tuple[int, str, str]] = []
        self.arrays: dict[str, np.ndarray] = {}

    def row(self, i: int) -> np.ndarray:
        """Row ``i``, writable, in its shape."""
        return self.values[self.offsets[i]:self.offsets[i + 1]].reshape(tuple(int(v) for v in self.shapes[i]))

    def fail(self, i: int, name: str, reason: str) -> None:
        """Row ``i`` could not be made (a file that does not decode): listed, never a crash."""
        self.failures.append((i, name, reason))

    def finish(self, meta: dict[str, Any]) -> None:
        self.values.flush()
        del self.values
        np.save(self.folder / "offsets.npy", self.offsets)
        np.save(self.folder / "shapes.npy", self.shapes)
        for name, array in self.arrays.items():
            np.save(self.folder / f"{name}.npy", array)
        (self.folder / MARKER).write_text(json.dumps({**meta, "failures": sorted(set(self.failures))}, indent=1))


class RaggedArrays:
    """A complete ragged-array folder (module doc), opened for reading; pickles without its map."""

    def __init__(self, folder: str | Path, in_memory: bool = False) -> None:
        self.folder = Path(folder)
        self.meta: dict[str, Any] = json.loads((self.folder / MARKER).read_text())
        self.key = self.meta["key"]
        self.failures: list[tuple[int, str, str]] = [tuple(f) for f in self.meta["failures"]]  # (row, name, reason)
        self.offsets = np.load(self.folder / "offsets.npy")
        self.shapes = np.load(self.folder / "shapes.npy")
        self.in_memory = in_memory
        self._values: np.ndarray | None = None

    @classmethod
    @contextmanager
    def create(cls, cache_dir: str | Path, name: str, shapes: Sequence[Sequence[int]] | np.ndarray, dtype: Any) -> Iterator[RaggedWriter]:
        """Build ``cache_dir/name`` with rows of ``shapes``; the body fills them and ends with
        ``writer.finish(meta)`` (meta holds at least the key)."""
        shapes = np.asarray(shapes, dtype=np.int64)
        shapes = shapes.reshape(len(shapes), -1) if len(shapes) else shapes.reshape(0, 0)  # (N, ndim), no rows allowed
        with staged(cache_dir, name) as tmp:
            writer = RaggedWriter(tmp, shapes, np.dtype(dtype))
            yield writer
            if not (tmp / MARKER).is_file():
                raise RuntimeError(f"the build of {name} ended without finish(meta)")

    def __len__(self) -> int:
        return len(self.shapes)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_values": None}  # workers map the file themselves

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            self._values = np.load(self.folder / "values.npy", mmap_mode=None if self.in_memory else "r")
        return self._values

    def array(self, name: str) -> np.ndarray:
        """A whole array stored beside the rows (``<name>.npy``), read into memory."""
        return np.load(self.folder / f"{name}.npy")

    def get(self, i: int) -> np.ndarray:
        """Row ``i`` in its shape, a read-only view of the map."""
        return self.values[self.offsets[i]:self.offsets[i + 1]].reshape(tuple(int(v) for v in self.shapes[i]))

    def failed_rows(self) -> list[int]:
        return [row for row, _, _ in self.failures]

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir())

    def value_bytes(self) -> int:
        return int(self.offsets[-1]) * np.load(self.folder / "values.npy", mmap_mode="r").dtype.itemsize

    def index_bytes(self) -> int:
        return int(self.offsets.nbytes + self.shapes.nbytes)
