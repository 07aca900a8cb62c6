"""WebDataset tar shards: write them from a folder, index them for the loader, or stream them.

A sample is ``KEY.EXT`` (the image file's bytes, unchanged) plus ``KEY.json`` with
``original_height`` and ``original_width`` (after EXIF orientation) and ``label``, the fields
img2dataset writes, so shards made elsewhere with pre-resized pixels keep their true original
size (paper section 2.2; diffusers #6203 recorded the resized size instead).

Two ways to read shards:

- :func:`index_shards` reads local shards by member offset into an
  :class:`~microcond.data.loader.ImageSource`: every guarantee of
  :class:`~microcond.data.loader.BucketBatches` holds (global batches, exact split across ranks
  and workers, exact resume, the pixel cache).
- :class:`ShardStream` streams shards with the ``webdataset`` package for data too large to
  index or not on local disk. Each epoch the shard list is shuffled by ``(seed, epoch)``; rank
  ``r`` takes shards ``r::world_size`` and worker ``w`` of it takes ``w::num_workers`` of those
  (the slicing of ``webdataset.split_by_node`` / ``split_by_worker``, done here with explicit
  rank and seed). Batches fill per-bucket buffers; a partly filled buffer carries over to the
  next epoch. A restarted stream begins at ``start_epoch`` (no mid-epoch position): use
  :func:`index_shards` for exact resume. Every rank must hold at least one shard: use many more shards than
  ``world_size * num_workers``.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from microcond.data.buckets import Bucket, assign_bucket
from webdataset.tariterators import base_plus_ext

from microcond.data.crop import CROP_MODES, crop, load_resized, oriented_size
from microcond.data.loader import SHUFFLE_STREAM, ImageSource, collate, sample_rng

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
SHARD_STRIDE = 1 << 32  # a streamed sample's index is shard * SHARD_STRIDE + position in the shard


def write_shards(source: ImageSource, out_dir: str | Path, max_count: int = 1000, progress: bool = True) -> list[Path]:
    """Write every row of ``source`` into ``out_dir/shard-NNNNNN.tar``, ``max_count`` samples each."""
    import webdataset
    from tqdm import tqdm

    if not (isinstance(max_count, int) and max_count >= 1):
        raise ValueError(f"max_count must be a positive integer of samples per shard, got {max_count!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("shard-*.tar")):
        raise ValueError(f"{out} already holds shard-*.tar files; choose an empty --out folder")
    written: list[Path] = []
    with webdataset.ShardWriter(str(out / "shard-%06d.tar"), maxcount=max_count, verbose=0,
                                post=lambda name: written.append(Path(name))) as sink:
        for i in tqdm(range(len(source)), desc="shards", unit="img", disable=not progress, file=sys.stderr):
            file = source.locations[i][0]
            ext = Path(file).suffix.lower().lstrip(".") or "img"
            ext = "jpg" if ext == "jpeg" else ext
            data = source.open(i)
            data = data if isinstance(data, bytes) else Path(data).read_bytes()
            h, w = (int(v) for v in source.original_sizes[i])
            meta = {"original_height": h, "original_width": w, "label": int(source.labels[i]), "source": source.names[i]}
            sink.write({"__key__": f"{i:09d}", ext: data, "json": json.dumps(meta).encode()})
    return written


def _original_size(meta: dict[str, Any]) -> tuple[int, int] | None:
    """(h, w) from img2dataset-style JSON, or None when absent."""
    if "original_height" in meta and "original_width" in meta:
        return int(meta["original_height"]), int(meta["original_width"])
    return None


def _label(meta: dict[str, Any], cls: bytes | None) -> int:
    if isinstance(meta.get("label"), int):
        return int(meta["label"])
    return int(cls.decode().strip()) if cls else -1


def index_shards(shards: Sequence[str | Path], min_original_edge: int = 0) -> ImageSource:
    """Every image of local tar shards as an ImageSource, read later by member offset.

    The original size comes from the sample's JSON (``original_height`` / ``original_width``)
    when present, else from the image header. Samples without an image, with unreadable JSON or
    header are skipped and listed.
    """
    rows: dict[str, list[Any]] = {"names": [], "sizes": [], "labels": [], "stamps": [], "locations": [], "meta": []}
    skipped: list[tuple[str, str]] = []
    dropped = 0
    for shard in sorted(str(s) for s in shards):
        try:
            mtime = Path(shard).stat().st_mtime_ns
            with tarfile.open(shard, "r:") as tar:
                members: dict[str, dict[str, tarfile.TarInfo]] = {}
                for member in tar:
                    key, ext = base_plus_ext(member.name)  # webdataset's own KEY.EXT rule
                    if member.isfile() and key is not None:
                        members.setdefault(key, {})[ext.lower()] = member
                for key, files in members.items():
                    name = f"{shard}:{key}"
                    image = next((files[e] for e in IMAGE_EXTS if e in files), None)
                    if image is None:
                        skipped.append((name, f"no image member (found {sorted(files)})"))
                        continue
                    try:
                        meta = json.loads(tar.extractfile(files["json"]).read()) if "json" in files else {}
                        cls = tar.extractfile(files["cls"]).read() if "cls" in files else None
                        size = _original_size(meta)
                        from_meta = size is not None
                        if size is None:
                            with open_header(tar.extractfile(image).read()) as header:
                                size = oriented_size(header)
                        label = _label(meta, cls)
                    except (ValueError, OSError, TypeError) as err:
                        skipped.append((name, str(err)))
                        continue
                    if min(size) < min_original_edge:
                        dropped += 1
                        continue
                    rows["names"].append(name)
                    rows["sizes"].append(size)
                    rows["labels"].append(label)
                    rows["stamps"].append((image.size, mtime))
                    rows["locations"].append((shard, image.offset_data, image.size))
                    rows["meta"].append(from_meta)
        except (OSError, tarfile.TarError) as err:
            skipped.append((shard, f"unreadable tar ({err})"))
    n = len(rows["names"])
    return ImageSource(
        names=rows["names"],
        original_sizes=np.asarray(rows["sizes"], dtype=np.int64).reshape(n, 2),
        labels=np.asarray(rows["labels"], dtype=np.int64).reshape(n),
        stamps=np.asarray(rows["stamps"], dtype=np.int64).reshape(n, 2),
        locations=rows["locations"],
        size_from_metadata=np.asarray(rows["meta"], dtype=bool).reshape(n),
        skipped=skipped,
        dropped_small=dropped,
    )


def open_header(data: bytes) -> Any:
    """A lazily opened image (header only) of some bytes; ValueError when unreadable."""
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data))
    except Exception as err:  # Pillow raises many types for a bad header
        raise ValueError(f"not a readable image ({type(err).__name__}: {err})") from None


class ShardStream(IterableDataset):
    """Stream shards with ``webdataset``: per-rank batches of one bucket each (see module doc).

    The batch dict is the loader's: pixels (B, 3, H, W) uint8, ids (B, 6), labels (B,), index
    (B,) = ``shard * SHARD_STRIDE + position`` with ``shard`` the position in the sorted list.
    """

    def __init__(self, shards: Sequence[str | Path], buckets: Sequence[Bucket], batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, crop_mode: str = "random", flip_probability: float = 0.0,
                 start_epoch: int = 0, epochs: int | None = None, background: tuple[int, int, int] = (255, 255, 255), fast: bool = True) -> None:
        self.shards = sorted(str(s) for s in shards)
        if len(self.shards) < world_size:
            raise ValueError(f"{len(self.shards)} shards for world_size={world_size}: every rank needs at least one shard; "
                             "write more, smaller shards (microcond shard --max-count)")
        if crop_mode not in CROP_MODES or not 0.0 <= flip_probability <= 1.0 or batch_size < 1:
            raise ValueError(f"expected crop_mode in {CROP_MODES}, flip_probability in [0, 1] and batch_size >= 1, "
                             f"got {crop_mode!r}, {flip_probability}, {batch_size}")
        self.buckets, self.batch_size, self.seed = tuple(tuple(b) for b in buckets), batch_size, int(seed)
        self.rank, self.world_size, self.crop_mode, self.flip_probability = rank, world_size, crop_mode, flip_probability
        self.epochs, self.background, self.fast = epochs, tuple(background), fast
        self.start_epoch = start_epoch
        self.skipped: list[tuple[str, str]] = []

    def my_shards(self, epoch: int, worker: int, workers: int) -> list[int]:
        """Shard numbers this rank's worker reads in ``epoch``."""
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([self.seed, SHUFFLE_STREAM, epoch])))
        order = rng.permutation(len(self.shards))
        return [int(s) for s in order[self.rank::self.world_size][worker::workers]]

    def samples(self, epoch: int, worker: int, workers: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(index, webdataset sample) of this worker's shards, bad tars and samples skipped and listed."""
        from webdataset.tariterators import tarfile_samples

        def handler(err: Exception) -> bool:
            self._skip("shard", err)
            return True

        for shard in self.my_shards(epoch, worker, workers):
            for position, sample in enumerate(tarfile_samples([{"url": self.shards[shard]}], handler=handler)):
                yield shard * SHARD_STRIDE + position, sample

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        buffers: dict[Bucket, list[tuple[int, bytes, tuple[int, int] | None, int]]] = {b: [] for b in self.buckets}
        epoch = self.start_epoch
        while self.epochs is None or epoch < self.epochs:
            for index, sample in self.samples(epoch, worker, workers):
                name = f"{sample.get('__url__')}:{sample.get('__key__')}"
                try:
                    data = next(sample[e] for e in IMAGE_EXTS if e in sample)
                    meta = json.loads(sample["json"]) if "json" in sample else {}
                    size = _original_size(meta)
                    if size is None:
                        with open_header(data) as header:
                            size = oriented_size(header)
                    label = _label(meta, sample.get("cls"))
                except (StopIteration, ValueError, TypeError) as err:
                    self._skip(name, err if not isinstance(err, StopIteration) else ValueError("no image member"))
                    continue
                bucket = assign_bucket(size[0], size[1], self.buckets)
                buffers[bucket].append((index, data, _original_size(meta), label))
                if len(buffers[bucket]) == self.batch_size:
                    batch = self._batch(epoch, bucket, buffers[bucket])
                    buffers[bucket] = []
                    if batch is not None:
                        yield batch
            epoch += 1
        waiting = sum(len(b) for b in buffers.values())
        if waiting:
            print(f"microcond shards: {waiting} images in partly filled buckets at the end of the last epoch", file=sys.stderr)

    def _batch(self, epoch: int, bucket: Bucket, items: list[tuple[int, bytes, Any, int]]) -> dict[str, torch.Tensor] | None:
        pixels, conds, labels, indices = [], [], [], []
        for index, data, original, label in items:
            rng = sample_rng(self.seed, epoch, index)
            flip = bool(rng.random() < self.flip_probability)  # same draw order as the loader
            try:
                resized, original = load_resized(data, bucket, original_size=original, background=self.background, fast=self.fast)
            except ValueError as err:
                self._skip(f"sample {index}", err)
                continue
            image, cond = crop(resized, original, bucket, rng, mode=self.crop_mode, flip=flip)
            pixels.append(image), conds.append(cond), labels.append(label), indices.append(index)
        if not pixels:
            return None
        return collate(pixels, conds, labels, indices)

    def _skip(self, name: str, err: Exception) -> None:
        self.skipped.append((name, str(err)))
        print(f"microcond shards: skipped {name}: {err}", file=sys.stderr)
