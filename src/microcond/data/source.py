"""The usable images of a data set (a scanned folder or local shards), one row each.

:class:`ImageSource` is what every reader shares: the loader's bucketed batches, the pixel cache
and the shard readers take rows from it, so none of them imports another. Random choices per
sample come from :func:`sample_rng`; a batch of samples is put together by :func:`collate`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from microcond.cond.record import MicroCond, stack_ids
from microcond.data.buckets import Bucket
from microcond.data.crop import load_resized
from microcond.data.metadata import labels_of

if TYPE_CHECKING:
    import torch

# Stream tags of the SeedSequence, so shuffles and crops never share random numbers.
SHUFFLE_STREAM = 0
CROP_STREAM = 1

# What the model is told as an image's original size (config original_size_source): the file's
# size (SDXL), the effective size measured by `microcond scan --effective` (the size before any
# upscaling, :mod:`microcond.data.effective`), or the smaller of the two per axis.
SIZE_SOURCES = ("file", "effective", "min")


def told_size(file: tuple[int, int], effective: tuple[int, int] | None, source: str) -> tuple[int, int]:
    """The original size a sample's MicroCond carries; the file's when no effective size is known."""
    if source == "file" or effective is None:
        return file
    if source == "effective":
        return effective
    return min(file[0], effective[0]), min(file[1], effective[1])


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample's crop and flip in one epoch (independent of workers)."""
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, CROP_STREAM, epoch, index])))


@dataclass
class ImageSource:
    """The usable images of a data set, one row each; ``index`` in a batch is the row.

    Attributes:
        names: a printable name per row (a file path, or ``shard.tar:key``).
        original_sizes: (N, 2) int64, ``(height, width)`` after EXIF orientation.
        labels: (N,) int64 class ids, -1 where the source has no label.
        stamps: (N, 2) int64 ``(bytes, mtime_ns)`` of the file holding each row (cache key).
        locations: per row ``(file, offset, length)``; ``offset < 0`` means the whole file.
        size_from_metadata: (N,) bool, True where ``original_sizes`` comes from metadata and the
            stored pixels were resized before (img2dataset shards); else the decoded pixels must
            have exactly that size.
        skipped: ``(name, reason)`` of every image left out (unusable in the index, or failing
            to decode later).
        dropped_small: images left out by ``min_original_edge`` (the paper's "512-only" baseline).
        root: the folder the images were scanned in (shards record paths relative to it); None
            for shards.
        keys: (N,) int64 keys of the per-sample generators (:func:`sample_rng`); None means the
            row. Shards set their samples' keys, so the indexed and the streamed reader agree.
        effective_sizes: (N, 2) int64 effective original sizes (``scan --effective``), -1 where
            not measured; None when the data has none.
        size_source: which size the MicroConds carry (:data:`SIZE_SOURCES`, :func:`told_size`).
    """

    names: list[str]
    original_sizes: np.ndarray
    labels: np.ndarray
    stamps: np.ndarray
    locations: list[tuple[str, int, int]]
    size_from_metadata: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped_small: int = 0
    root: str | None = None
    keys: np.ndarray | None = None
    effective_sizes: np.ndarray | None = None
    size_source: str = "file"

    def __post_init__(self) -> None:
        if self.size_source not in SIZE_SOURCES:
            raise ValueError(f"original_size_source must be one of {SIZE_SOURCES}, got {self.size_source!r}")
        if self.size_source != "file" and self.effective_sizes is None:
            raise ValueError(f"original_size_source={self.size_source} needs effective sizes: index the folder with "
                             "`microcond scan DIR --effective` (shards: write them from such an index)")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        index_path: str | Path | None = None,
        labels: bool = True,
        min_original_edge: int = 0,
        cache_dir: str | Path | None = None,
        size_source: str = "file",
    ) -> "ImageSource":
        """The images of a folder, from its scan index (scanned into ``cache_dir`` if not given).

        Args:
            index_path: an index written by ``microcond scan``; when omitted the folder is scanned
                incrementally into ``cache_dir`` (never into the data folder).
            labels: read class labels from the folder's ``metadata.jsonl`` (``"file"`` relative to
                the folder, ``"label"`` an int; :mod:`microcond.data.metadata`); False, or no such
                file, gives label -1.
            min_original_edge: leave out images whose short original edge (the file's) is below this.
            size_source: the original size MicroConds carry (:data:`SIZE_SOURCES`); other than
                "file", the index needs effective sizes (a scan into ``cache_dir`` measures them).
        """
        folder = Path(os.path.abspath(path))  # read_index's paths are absolute the same way
        if not folder.is_dir():
            raise ValueError(f"expected an image folder, got {str(path)!r} (not a directory); pass the folder that holds the images")
        from microcond.data.index import read_index
        from microcond.data.scan import scan

        if index_path is None:
            if cache_dir is None:
                raise ValueError(
                    f"no index for {folder}: pass index_path (from `microcond scan`) or a cache_dir to write one in"
                )
            index_path = Path(cache_dir) / f"index-{_short_hash(str(folder))}.parquet"
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            report = scan([folder], index_path, effective=size_source != "file")  # incremental: unchanged files reused
            print(report.line(), file=sys.stderr)
        rows = read_index(index_path).to_pydict()
        label_of = labels_of(folder) if labels else {}
        return cls.from_rows(rows, folder, label_of, min_original_edge, size_source)

    @classmethod
    def from_rows(
        cls, rows: dict[str, Sequence[Any]], folder: Path | None, label_of: dict[str, int], min_original_edge: int = 0,
        size_source: str = "file",
    ) -> "ImageSource":
        """Build from index columns (path, height, width, bytes, mtime_ns, status, reason, and
        effective_height / effective_width when measured), paths absolute."""
        if isinstance(min_original_edge, bool) or not isinstance(min_original_edge, int) or min_original_edge < 0:
            raise ValueError(f"min_original_edge must be a non-negative integer of pixels, got {min_original_edge!r}")
        names, sizes, labels, stamps, skipped, dropped, effective = [], [], [], [], [], 0, []
        measured = "effective_height" in rows and "effective_width" in rows
        if size_source != "file" and not measured:
            raise ValueError(f"original_size_source={size_source} needs effective sizes, and this index has none: "
                             "rescan with `microcond scan DIR --out INDEX --effective`")
        heights = rows["effective_height"] if measured else [None] * len(rows["path"])
        widths = rows["effective_width"] if measured else [None] * len(rows["path"])
        for path, h, w, nbytes, mtime, status, reason, eh, ew in zip(
            rows["path"], rows["height"], rows["width"], rows["bytes"], rows["mtime_ns"], rows["status"], rows["reason"], heights, widths
        ):
            if status != "ok":
                skipped.append((str(path), f"{status}: {reason}"))
                continue
            if eh is not None and ew is not None and (eh > h or ew > w):  # undoing an upscale never grows
                skipped.append((str(path), f"effective size ({eh}, {ew}) exceeds the file's ({h}, {w}) in the index: rescan with --effective"))
                continue
            if min(h, w) < min_original_edge:
                dropped += 1
                continue
            names.append(str(path))
            sizes.append((int(h), int(w)))
            rel = os.path.relpath(path, folder) if folder is not None else str(path)
            labels.append(int(label_of.get(Path(rel).as_posix(), -1)))
            stamps.append((int(nbytes), int(mtime)))
            effective.append((int(eh), int(ew)) if eh is not None and ew is not None else (-1, -1))
        n = len(names)
        return cls(
            names=names,
            original_sizes=np.asarray(sizes, dtype=np.int64).reshape(n, 2),
            labels=np.asarray(labels, dtype=np.int64).reshape(n),
            stamps=np.asarray(stamps, dtype=np.int64).reshape(n, 2),
            locations=[(name, -1, -1) for name in names],
            size_from_metadata=np.zeros(n, dtype=bool),
            skipped=skipped,
            dropped_small=dropped,
            root=None if folder is None else str(folder),
            effective_sizes=np.asarray(effective, dtype=np.int64).reshape(n, 2) if measured else None,
            size_source=size_source,
        )

    def told_size(self, i: int) -> tuple[int, int]:
        """Row ``i``'s original size as its MicroCond carries it (``size_source``)."""
        file = (int(self.original_sizes[i, 0]), int(self.original_sizes[i, 1]))
        if self.effective_sizes is None or self.effective_sizes[i, 0] < 1:
            return told_size(file, None, self.size_source)
        return told_size(file, (int(self.effective_sizes[i, 0]), int(self.effective_sizes[i, 1])), self.size_source)

    def told_digest(self) -> str:
        """A hash of every row's told size: the part of a cache key that holds MicroConds."""
        import hashlib

        told = np.array([self.told_size(i) for i in range(len(self))], dtype=np.int64).reshape(len(self), 2)
        return hashlib.sha256(self.size_source.encode() + told.tobytes()).hexdigest()[:16]

    def key(self, i: int) -> int:
        """The key of row ``i``'s crop and flip generator."""
        return i if self.keys is None else int(self.keys[i])

    def open(self, i: int) -> str | bytes:
        """What :func:`microcond.data.crop.load_resized` reads for row ``i``: a path, or bytes of a tar member."""
        file, offset, length = self.locations[i]
        if offset < 0:
            return file
        with open(file, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def load(self, i: int, target_size: Bucket, *, background: tuple[int, int, int], fast: bool) -> np.ndarray:
        """Row ``i`` decoded and resized to cover ``target_size``: (h, w, 3) uint8, checked.

        Raises ``ValueError`` when the pixels do not match the recorded original size (the file
        changed since it was indexed), so that a stale record never reaches a MicroCond.
        """
        original = tuple(int(v) for v in self.original_sizes[i])
        given = original if self.size_from_metadata[i] else None
        resized, decoded = load_resized(self.open(i), target_size, original_size=given, background=background, fast=fast)
        if tuple(decoded) != original:
            raise ValueError(f"decoded size {tuple(decoded)} differs from the indexed {original}; rescan the folder")
        return resized  # (H, W, 3) with (H, W) == resized_size(original, target_size)

    def summary(self) -> dict[str, Any]:
        """Counts for a report: usable, skipped (with reasons listed separately), dropped as small."""
        counts = {"images": len(self), "skipped": len(self.skipped), "dropped_small": self.dropped_small,
                  "labelled": int((self.labels >= 0).sum()), "original_size_source": self.size_source}
        if self.effective_sizes is not None:
            counts["effective_unmeasured"] = int((self.effective_sizes[:, 0] < 1).sum())  # told their file size
        return counts


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def collate(pixels: list[np.ndarray], conds: list[MicroCond], labels: list[int], index: list[int],
            size: int | None = None) -> dict[str, "torch.Tensor"]:
    """The batch dict; samples lost to decode errors are replaced by repeats to keep ``size`` rows."""
    import torch

    count = len(pixels)
    keep = [k % count for k in range(size or count)]
    return {
        "pixels": torch.from_numpy(np.stack([pixels[k] for k in keep])).permute(0, 3, 1, 2).contiguous(),  # (B, 3, H, W) uint8
        "ids": torch.from_numpy(stack_ids([conds[k] for k in keep])),  # (B, 6) int64, SDXL order
        "labels": torch.tensor([labels[k] for k in keep], dtype=torch.int64),  # (B,)
        "index": torch.tensor([index[k] for k in keep], dtype=torch.int64),  # (B,)
    }


def default_cache_dir() -> Path:
    """Where scan indexes and pixel caches go: $MICROCOND_CACHE, else $XDG_CACHE_HOME/microcond."""
    root = os.environ.get("MICROCOND_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "microcond"
    return Path(root)
