"""Decode once, crop many times: every image resized to cover its bucket, in a memory-mapped file.

For small training targets decoding in the loop would cost more than the training step
(reference/cpu-measurements.md: ~186 training images/s against ~60-110 decoded files/s), so
:class:`PixelCache` decodes each image once and the loader crops from the cached array with the
same :func:`~microcond.data.crop.crop` call as the decoding path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from microcond.cond.record import resized_size
from microcond.data.buckets import Bucket, assign_bucket
from microcond.data.crop import load_resized
from microcond.data.ragged import MARKER, RaggedArrays

if TYPE_CHECKING:
    from microcond.data.source import ImageSource


# Bump when the cached content changes meaning (it is part of the key).
CACHE_VERSION = 2  # 2: the ragged-array layout of data.ragged


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


class PixelCache(RaggedArrays):
    """Every image resized to cover its bucket, uint8 (h, w, 3), one row each of a memory-mapped
    ragged array (:mod:`microcond.data.ragged`): the pixels live once in the page cache, not once
    per loader worker. ``meta.json`` adds the buckets."""

    def __init__(self, folder: str | Path, in_memory: bool = False) -> None:
        super().__init__(folder, in_memory)
        self.buckets = tuple(tuple(b) for b in self.meta["buckets"])

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
        if (folder / MARKER).is_file():
            return cls(folder, in_memory)
        targets = bucket_targets(source, buckets)
        shapes = [(*resized_size(tuple(s), t), 3) for s, t in zip(source.original_sizes.tolist(), targets)]
        with cls.create(cache_dir, folder.name, np.asarray(shapes, dtype=np.int64).reshape(len(source), 3), np.uint8) as cache:
            jobs = [(i, t, tuple(background), fast) for i, t in enumerate(targets)]
            bar = tqdm(total=len(jobs), desc="pixel cache", unit="img", disable=not progress, file=sys.stderr)
            pool = multiprocessing.get_context("fork").Pool(max(1, processes), _init_build, (source,))
            try:
                for i, array, reason in pool.imap_unordered(_load_row, jobs, chunksize=16):
                    if array is None:
                        cache.fail(i, source.names[i], reason)
                    else:
                        cache.row(i)[...] = array
                    bar.update()
                pool.close()  # every task done: the workers end on their own (Pool.terminate, the
            except BaseException:  # context manager's exit, can hang on the queue's lock held by a worker)
                pool.terminate()
                raise
            finally:
                pool.join()
            bar.close()
            cache.finish({"key": key, "buckets": [list(b) for b in buckets], "images": len(source)})
        return cls(folder, in_memory)

    def sizes(self) -> dict[str, int]:
        """Bytes on disk, pixel bytes (mapped: page cache shared by workers, or heap if in_memory), index bytes."""
        return {"disk_bytes": self.disk_bytes(), "pixel_bytes": self.value_bytes(), "in_memory": self.in_memory, "index_bytes": self.index_bytes()}
