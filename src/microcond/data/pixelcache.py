"""Decode once, crop many times: every image resized to cover its bucket, in a memory-mapped file.

For small training targets decoding in the loop would cost more than the training step
(reference/cpu-measurements.md: ~186 training images/s against ~60-110 decoded files/s), so
:class:`PixelCache` decodes each image once and the loader crops from the cached array with the
same :func:`~microcond.data.crop.crop` call as the decoding path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from microcond.cond.record import resized_size
from microcond.data.buckets import Bucket, assign_bucket
from microcond.data.crop import load_resized

if TYPE_CHECKING:
    from microcond.data.source import ImageSource


# Bump when the cached content changes meaning (it is part of the key).
CACHE_VERSION = 1

# A cache folder being built: ".<kind>-<key>.tmp<pid>" (pixel, latent and text caches alike).
_STAGING_RE = re.compile(r"^\.(?:pixels|latents|text)-[0-9a-f]+\.tmp(\d+)$")


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
    stale = [p for p in cache_dir.iterdir() if (m := _STAGING_RE.match(p.name)) and int(m[1]) != os.getpid() and not _running(int(m[1]))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


@contextmanager
def staged(cache_dir: str | Path, name: str, marker: str) -> Iterator[Path]:
    """Build ``cache_dir/name`` in a private folder that is renamed into place when the body ends.

    A half-written cache is never found under its name: the body writes ``marker`` last, a failed
    body (disk full, Ctrl-C) removes its folder, and folders left by killed builds go first.
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


def bucket_targets(source: ImageSource, buckets: Sequence[Bucket]) -> list[Bucket]:
    """Each row's target size: its bucket, assigned once from the original size."""
    sizes, rows = np.unique(source.original_sizes.reshape(-1, 2), axis=0, return_inverse=True)  # few distinct sizes
    targets = [assign_bucket(int(h), int(w), buckets) for h, w in sizes]
    return [targets[k] for k in rows.reshape(-1)]


def cache_key(source: ImageSource, buckets: Sequence[Bucket], background: Sequence[int], fast: bool) -> str:
    """Hash of everything that changes the cached pixels: buckets, resize path, background, files."""
    import hashlib

    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "buckets": [list(b) for b in buckets],
                                        "background": list(background), "fast": fast,
                                        "resize": f"{load_resized.__module__}.{load_resized.__qualname__}"}).encode())
    for name, (nbytes, mtime), (h, w), meta in zip(source.names, source.stamps.tolist(), source.original_sizes.tolist(),
                                                     source.size_from_metadata.tolist()):
        digest.update(f"{name}\0{nbytes}\0{mtime}\0{h}\0{w}\0{int(meta)}\n".encode())
    return digest.hexdigest()[:24]


_BUILD_SOURCE: ImageSource | None = None  # set in each cache-building process by _init_build


def _init_build(source: ImageSource) -> None:
    global _BUILD_SOURCE
    _BUILD_SOURCE = source


def _load_row(job: tuple[int, Bucket, tuple[int, int, int], bool]) -> tuple[int, np.ndarray | None, str]:
    i, target, background, fast = job
    assert _BUILD_SOURCE is not None
    try:
        return i, _BUILD_SOURCE.load(i, target, background=background, fast=fast), ""
    except (OSError, ValueError) as err:  # a bad file becomes a listed failure, never a crash
        return i, None, str(err) or type(err).__name__


class PixelCache:
    """Every image resized to cover its bucket, uint8, in one memory-mapped ``pixels.npy``.

    Layout of ``cache_dir/pixels-<key>/``: ``pixels.npy`` (flat uint8, all images back to back),
    ``offsets.npy`` (N+1,) int64 and ``shapes.npy`` (N, 2) int64 index it, ``meta.json`` holds the
    key, the buckets and the failed rows. Worker processes map the same file: the pixels live
    once in the page cache, not once per worker.
    """

    def __init__(self, folder: str | Path, in_memory: bool = False) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.key, self.buckets = meta["key"], tuple(tuple(b) for b in meta["buckets"])
        self.failures: list[tuple[int, str, str]] = [tuple(f) for f in meta["failures"]]  # (row, name, reason)
        self.offsets = np.load(self.folder / "offsets.npy")
        self.shapes = np.load(self.folder / "shapes.npy")
        self.in_memory = in_memory
        self._pixels: np.ndarray | None = None

    @classmethod
    def build(cls, source: ImageSource, buckets: Sequence[Bucket], cache_dir: str | Path, *,
              background: tuple[int, int, int] = (255, 255, 255), fast: bool = True, processes: int = 2,
              in_memory: bool = False, progress: bool = True) -> "PixelCache":
        """Decode every image once (``processes`` in parallel), or reuse the cache with the same key."""
        import multiprocessing

        from tqdm import tqdm

        buckets = tuple(tuple(b) for b in buckets)
        key = cache_key(source, buckets, background, fast)
        folder = Path(cache_dir) / f"pixels-{key}"
        if (folder / "meta.json").is_file():
            return cls(folder, in_memory)
        targets = bucket_targets(source, buckets)
        shapes = np.array([resized_size(tuple(s), t) for s, t in zip(source.original_sizes.tolist(), targets)],
                          dtype=np.int64).reshape(len(source), 2)
        offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1] * 3)]).astype(np.int64)
        with staged(cache_dir, folder.name, "meta.json") as tmp:
            pixels = np.lib.format.open_memmap(tmp / "pixels.npy", mode="w+", dtype=np.uint8, shape=(int(offsets[-1]),))
            jobs = [(i, t, tuple(background), fast) for i, t in enumerate(targets)]
            failures = []
            bar = tqdm(total=len(jobs), desc="pixel cache", unit="img", disable=not progress, file=sys.stderr)
            with multiprocessing.get_context("fork").Pool(max(1, processes), _init_build, (source,)) as pool:
                for i, array, reason in pool.imap_unordered(_load_row, jobs, chunksize=16):
                    if array is None:
                        failures.append((i, source.names[i], reason))
                    else:
                        pixels[offsets[i]:offsets[i + 1]] = array.reshape(-1)
                    bar.update()
            bar.close()
            pixels.flush()
            del pixels
            np.save(tmp / "offsets.npy", offsets)
            np.save(tmp / "shapes.npy", shapes)
            meta = {"key": key, "buckets": [list(b) for b in buckets], "images": len(source),
                    "failures": sorted(failures)}
            (tmp / "meta.json").write_text(json.dumps(meta))
        return cls(folder, in_memory)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}  # workers map the file themselves

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.load(self.folder / "pixels.npy", mmap_mode=None if self.in_memory else "r")
        return self._pixels

    def get(self, i: int) -> np.ndarray:
        """Row ``i``'s resized pixels, (h, w, 3) uint8 (a read-only view of the map)."""
        h, w = self.shapes[i]
        return self.pixels[self.offsets[i]:self.offsets[i + 1]].reshape(int(h), int(w), 3)

    def failed_rows(self) -> list[int]:
        return [row for row, _, _ in self.failures]

    def sizes(self) -> dict[str, int]:
        """Bytes on disk, pixel bytes (mapped: page cache shared by workers, or heap if in_memory), index bytes."""
        disk = sum(p.stat().st_size for p in self.folder.iterdir())
        return {"disk_bytes": disk, "pixel_bytes": int(self.offsets[-1]), "in_memory": self.in_memory,
                "index_bytes": int(self.offsets.nbytes + self.shapes.nbytes)}
