"""WebDataset tar shards: write them from a folder, index them for the loader, or stream them.

A sample is ``KEY.EXT`` (the image file's bytes, unchanged) plus ``KEY.json`` with
``original_height`` and ``original_width`` (after EXIF orientation) and ``label``, the fields
img2dataset writes, so shards made elsewhere with pre-resized pixels keep their true original
size (paper section 2.2; diffusers #6203 recorded the resized size instead). ``source`` is the
image's path relative to the scanned folder (never an absolute local path).

Members are grouped into samples as webdataset does (consecutive files sharing the key of
``base_plus_ext``). A bad sample never stops the reading: a JSON that is not an object, an
original size that is not an integer from 1 to ``headers.MAX_SIDE``, no image, an unreadable
header: the sample is skipped and listed as ``shard:key`` with its reason. A damaged tar (cut
short) keeps the samples before the damage; the sample it cuts is left out and listed.

Two ways to read shards:

- :func:`index_shards` reads local shards by member offset into an
  :class:`~microcond.data.source.ImageSource`: every guarantee of
  :class:`~microcond.data.loader.BucketBatches` holds (global batches, exact split across ranks
  and workers, exact resume, the pixel cache).
- :class:`ShardStream` streams shards (opened with ``webdataset.gopen``: files, URLs, pipes)
  for data too large to index or not on local disk. Each epoch the shard list is shuffled by
  ``(seed, epoch)``; rank ``r`` takes shards ``r::world_size`` and worker ``w`` of it takes ``w::num_workers`` of those
  (the slicing of ``webdataset.split_by_node`` / ``split_by_worker``, done here with explicit
  rank and seed). Batches fill per-bucket buffers; a partly filled buffer carries over to the
  next epoch. A restarted stream begins at ``start_epoch`` (no mid-epoch position): use
  :func:`index_shards` for exact resume. Every rank must hold at least one shard: use many more shards than
  ``world_size * num_workers``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from microcond.data.buckets import Bucket, assign_bucket
from webdataset.tariterators import base_plus_ext

from microcond.data.crop import CROP_MODES, crop, load_resized, oriented_size
from microcond.data.headers import MAX_SIDE, size_problem
from microcond.data.source import SHUFFLE_STREAM, ImageSource, collate, sample_rng

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
SHARD_STRIDE = 1 << 32  # a streamed sample's index is shard * SHARD_STRIDE + position in the shard


def write_shards(source: ImageSource, out_dir: str | Path, max_count: int = 1000, progress: bool = True) -> list[Path]:
    """Write every row of ``source`` into ``out_dir/shard-NNNNNN.tar``, ``max_count`` samples each."""
    import webdataset
    from tqdm import tqdm

    if not (isinstance(max_count, int) and max_count >= 1):
        raise ValueError(f"max_count must be a positive integer of samples per shard, got {max_count!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; choose a new or empty folder for the shards")
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
            meta = {"original_height": h, "original_width": w, "label": int(source.labels[i])}
            if source.root is not None:  # provenance without the local folder's absolute path
                meta["source"] = Path(os.path.relpath(source.names[i], source.root)).as_posix()
            sink.write({"__key__": f"{i:09d}", ext: data, "json": json.dumps(meta).encode()})
    return written


def _tar_samples(tar: tarfile.TarFile, read: Callable[[tarfile.TarInfo], Any],
                 damage: list[tuple[str | None, str]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(key, {ext: read(member)})`` per sample, in tar order (webdataset's grouping).

    A damaged tar ends the samples: those before the damage are kept; the one it cuts may lack
    members, so it is left out, and ``(its key, reason)`` goes to ``damage``.
    """
    key, files, kept = None, {}, 0
    try:
        for member in tar:
            member_key, ext = base_plus_ext(member.name)  # webdataset's own KEY.EXT rule
            if not member.isfile() or member_key is None:
                continue
            if member_key != key:
                if key is not None:
                    yield key, files
                    kept += 1
                key, files = member_key, {}
            files[ext.lower()] = read(member)
        # tarfile ends silently at a missing or partial header: only the end-of-archive block says it is whole
        if tar.fileobj.tell() < tar.offset + tarfile.BLOCKSIZE:
            raise tarfile.ReadError("the tar ends without its end-of-archive block (truncated)")
    except (tarfile.TarError, OSError) as err:
        damage.append((key, f"damaged tar ({err}): this sample and any after it are left out, "
                            f"the {kept} samples before it are kept"))
        return
    if key is not None:
        yield key, files


def _metadata(raw: bytes | None) -> dict[str, Any]:
    """The sample's JSON object, ``{}`` without one; ValueError when it is not an object."""
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"the sample's JSON is unreadable ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"expected a JSON object in the sample's .json, got {type(meta).__name__} {raw[:40]!r}")
    return meta


def _original_size(meta: dict[str, Any]) -> tuple[int, int] | None:
    """(h, w) from img2dataset-style JSON, None when absent; ValueError when not a plausible size."""
    present = {k: meta[k] for k in ("original_height", "original_width") if meta.get(k) is not None}
    for name, value in present.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
            raise ValueError(f"expected {name} in the sample's JSON to be an integer from 1 to {MAX_SIDE}, got {value!r}")
    if len(present) < 2:
        return None
    return present["original_height"], present["original_width"]


def _label(meta: dict[str, Any], cls: bytes | None) -> int:
    label = meta["label"] if isinstance(meta.get("label"), int) else int(cls.decode().strip()) if cls else -1
    if not -1 <= label < 2**31:
        raise ValueError(f"expected a class label from -1 to 2**31 - 1 (JSON label or .cls), got {label}")
    return label


def _sample_info(files: dict[str, Any], read: Callable[[Any], bytes]) -> tuple[Any, tuple[int, int], bool, int]:
    """(image member, original (h, w), whether that size is the JSON's, label) of one sample.

    ``files`` maps extensions to members, ``read`` gives a member's bytes. ValueError says what is wrong.
    """
    image = next((files[e] for e in IMAGE_EXTS if e in files), None)
    if image is None:
        raise ValueError(f"no image member (found {sorted(files)})")
    meta = _metadata(read(files["json"]) if "json" in files else None)
    size = _original_size(meta)
    from_meta = size is not None
    if size is None:
        with open_header(read(image)) as header:
            size = oriented_size(header)
        if (problem := size_problem(*size)) is not None:
            raise ValueError(f"the image header gives {problem}")
    return image, size, from_meta, _label(meta, read(files["cls"]) if "cls" in files else None)


def index_shards(shards: Sequence[str | Path], min_original_edge: int = 0) -> ImageSource:
    """Every image of local tar shards as an ImageSource, read later by member offset.

    The original size comes from the sample's JSON (``original_height`` / ``original_width``)
    when present, else from the image header. Bad samples, unreadable tars and the damage of a
    cut tar are listed in ``skipped`` (see the module doc); the intact samples are kept.
    """
    rows: dict[str, list[Any]] = {"names": [], "sizes": [], "labels": [], "stamps": [], "locations": [], "meta": []}
    skipped: list[tuple[str, str]] = []
    dropped = 0
    for shard in sorted(str(s) for s in shards):
        try:
            mtime = Path(shard).stat().st_mtime_ns
            with tarfile.open(shard, "r:") as tar:
                damage: list[tuple[str | None, str]] = []
                for key, files in _tar_samples(tar, lambda member: member, damage):
                    name = f"{shard}:{key}"
                    try:
                        image, size, from_meta, label = _sample_info(files, lambda member: tar.extractfile(member).read())
                    except (ValueError, OSError, tarfile.TarError) as err:
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
                skipped += [(shard if key is None else f"{shard}:{key}", reason) for key, reason in damage]
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

    def samples(self, epoch: int, worker: int, workers: int) -> Iterator[tuple[int, str, dict[str, bytes]]]:
        """(index, ``shard:key``, {ext: bytes}) of this worker's shards; unreadable tars and damage listed."""
        from webdataset.gopen import gopen

        for shard in self.my_shards(epoch, worker, workers):
            url, damage = self.shards[shard], []
            try:
                with gopen(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
                    members = _tar_samples(tar, lambda member: tar.extractfile(member).read(), damage)
                    for position, (key, files) in enumerate(members):
                        yield shard * SHARD_STRIDE + position, f"{url}:{key}", files
            except (OSError, tarfile.TarError) as err:
                self._skip(url, f"unreadable tar ({err})")
            for key, reason in damage:
                self._skip(url if key is None else f"{url}:{key}", reason)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        buffers: dict[Bucket, list[tuple[int, str, bytes, tuple[int, int] | None, int]]] = {b: [] for b in self.buckets}
        epoch = self.start_epoch
        while self.epochs is None or epoch < self.epochs:
            for index, name, files in self.samples(epoch, worker, workers):
                try:
                    data, size, from_meta, label = _sample_info(files, lambda data: data)
                except ValueError as err:
                    self._skip(name, str(err))
                    continue
                bucket = assign_bucket(size[0], size[1], self.buckets)
                buffers[bucket].append((index, name, data, size if from_meta else None, label))
                if len(buffers[bucket]) == self.batch_size:
                    batch = self._batch(epoch, bucket, buffers[bucket])
                    buffers[bucket] = []
                    if batch is not None:
                        yield batch
            epoch += 1
        waiting = sum(len(b) for b in buffers.values())
        if waiting:
            print(f"microcond shards: {waiting} images in partly filled buckets at the end of the last epoch", file=sys.stderr)

    def _batch(self, epoch: int, bucket: Bucket, items: list[tuple[int, str, bytes, Any, int]]) -> dict[str, torch.Tensor] | None:
        pixels, conds, labels, indices = [], [], [], []
        for index, name, data, original, label in items:
            rng = sample_rng(self.seed, epoch, index)
            flip = bool(rng.random() < self.flip_probability)  # same draw order as the loader
            try:
                resized, original = load_resized(data, bucket, original_size=original, background=self.background, fast=self.fast)
            except ValueError as err:
                self._skip(name, str(err))
                continue
            image, cond = crop(resized, original, bucket, rng, mode=self.crop_mode, flip=flip)
            pixels.append(image), conds.append(cond), labels.append(label), indices.append(index)
        if not pixels:
            return None
        return collate(pixels, conds, labels, indices)

    def _skip(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))
        print(f"microcond shards: skipped {name}: {reason}", file=sys.stderr)
