"""Batches of one aspect bucket, split across DDP ranks and DataLoader workers, resumable.

The stream is a list of GLOBAL batches of ``batch_size * world_size`` images, all from one
bucket (the bucket is the ``target_size``); rank ``r`` takes rows ``[r*b:(r+1)*b]`` of each,
so one process with batch ``2b`` sees exactly what two ranks with ``b`` see. A rank's
DataLoader workers take every ``num_workers``-th global batch; PyTorch reads workers
round-robin (``batch_size=None``), so the order does not depend on the number of workers.

Epoch ``e`` of a bucket: the images left over from epoch ``e-1`` first (a bucket rarely holds a
multiple of the global batch), then the bucket's other images shuffled by ``(seed, e)``; full
global batches are cut from that order and the remainder carries over. So no image is dropped
and none appears twice in one epoch. Every random choice (shuffle, crop offset, flip) derives
from ``(seed, epoch, sample index)`` through numpy's SeedSequence and Philox, never from worker
identity or global state: results are the same for any number of workers and resume exactly.

Resume: the position is the number of global batches delivered. It is counted where batches are
consumed, by the iterable that :func:`make_loader` returns::

    loader = make_loader(dataset, num_workers=2)
    loader.load_state_dict(checkpoint["loader"])    # optional: continue at the same sample
    for batch in loader: ...                          # {"pixels", "ids", "labels", "index"}
    checkpoint["loader"] = loader.state_dict()        # counts every batch handed out so far

Small targets: :class:`PixelCache` decodes each image once into resized uint8 pixels (the
original scaled to cover its bucket, ``microcond.cond.embedder.resized_size``) in a memory-mapped
file, and the crops come from it with the same :func:`~microcond.data.crop.crop` call as the
decoding path, so both give identical pixels and MicroConds for a seed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from microcond.cond.record import MicroCond
from microcond.data.buckets import Bucket
from microcond.data.crop import CROP_MODES, crop
from microcond.data.pixelcache import PixelCache, bucket_targets, cache_key
from microcond.data.skips import Skips, check_num_workers, worker_errors
from microcond.data.source import SHUFFLE_STREAM, ImageSource, collate, default_cache_dir, sample_rng
from microcond.data.urls import expand_urls, is_stream

if TYPE_CHECKING:
    from microcond.data.stream import StreamLoader

@dataclass(frozen=True)
class Position:
    """Where the stream stands: ``batch`` global batches of ``epoch`` done, ``carry`` at its start."""

    epoch: int = 0
    batch: int = 0
    carry: tuple[tuple[int, ...], ...] = ()
    delivered: int = 0


class BucketBatches(IterableDataset):
    """Global batches of one bucket each; this rank's slice of every ``num_workers``-th one.

    Args:
        buckets: target sizes; each image is assigned once with ``assign_bucket(h, w, buckets)``.
        batch_size: images per rank; the global batch is ``batch_size * world_size``.
        rank, world_size: DDP position; None reads ``torch.distributed`` (0 and 1 without it).
        crop_mode: "random" (paper Algorithm 1) or "center".
        flip_probability: chance of a horizontal flip per sample.
        cache: resized pixels to crop from (:class:`PixelCache`, same source and buckets); None
            decodes every image in the loop.
        epochs: stop after this epoch count, counted from epoch 0 (a resumed run stops at the
            same place); None runs forever.
    """

    def __init__(
        self,
        source: ImageSource,
        buckets: Sequence[Bucket],
        batch_size: int,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        crop_mode: str = "random",
        flip_probability: float = 0.0,
        cache: "PixelCache | None" = None,
        epochs: int | None = None,
        background: tuple[int, int, int] = (255, 255, 255),
        fast: bool = True,
    ) -> None:
        if rank is None or world_size is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if dist else 0 if rank is None else rank
            world_size = torch.distributed.get_world_size() if dist else 1 if world_size is None else world_size
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer (images per rank), got {batch_size!r}")
        if not (0 <= rank < world_size):
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {crop_mode!r}")
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"flip_probability must lie in [0, 1], got {flip_probability}")
        self.source, self.buckets = source, tuple(tuple(b) for b in buckets)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.global_batch = batch_size * world_size
        self.seed, self.crop_mode, self.flip_probability = int(seed), crop_mode, float(flip_probability)
        self.cache, self.epochs, self.background, self.fast = cache, epochs, tuple(background), fast
        if cache is not None and cache.key != cache_key(source, self.buckets, self.background, fast):
            raise ValueError(f"pixel cache {cache.folder} was built for other images, buckets, background or resize "
                             f"path than this loader's ({len(source)} images, buckets {self.buckets}); build it with "
                             "PixelCache.build(source, buckets, cache_dir, background=..., fast=...)")
        number = {b: k for k, b in enumerate(self.buckets)}
        self.bucket_of = np.array([number[t] for t in bucket_targets(source, self.buckets)], dtype=np.int64).reshape(len(source))
        failed = set(cache.failed_rows()) if cache is not None else set()
        rows = np.array([i for i in range(len(source)) if i not in failed], dtype=np.int64)
        self.members = [rows[self.bucket_of[rows] == b] for b in range(len(self.buckets))]
        self.starved = [(self.buckets[b], len(m)) for b, m in enumerate(self.members) if 0 < len(m) < self.global_batch]
        if all(len(m) < self.global_batch for m in self.members):
            raise ValueError(f"no bucket holds a full global batch of {self.global_batch} images (bucket sizes "
                             f"{[len(m) for m in self.members]}, {len(source.skipped)} images skipped, {len(failed)} failed in the "
                             "pixel cache); lower batch_size or use fewer buckets")
        self.position = Position(carry=tuple(() for _ in self.buckets))
        self.skips = Skips("microcond loader")  # decode failures seen in this process
        self._plans: dict[int, tuple[list[tuple[int, np.ndarray]], tuple]] = {}

    # -- the plan: which images form which global batch, per epoch (indices only, cheap)

    def plan(self, epoch: int, carry: tuple[tuple[int, ...], ...]) -> tuple[list[tuple[int, np.ndarray]], tuple]:
        """Global batches ``(bucket, rows)`` of one epoch, in order, and the carry to the next."""
        key = (epoch, carry)
        if epoch in self._plans and self._plans[epoch][0] == key:
            return self._plans[epoch][1]
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([self.seed, SHUFFLE_STREAM, epoch])))
        batches, next_carry = [], []
        for b, members in enumerate(self.members):
            first = np.asarray(carry[b], dtype=np.int64)
            rest = members[~np.isin(members, first)]
            order = np.concatenate([first, rest[rng.permutation(len(rest))]])
            full = len(order) // self.global_batch
            batches += [(b, order[k * self.global_batch:(k + 1) * self.global_batch]) for k in range(full)]
            next_carry.append(tuple(int(i) for i in order[full * self.global_batch:]))
        batches = [batches[k] for k in rng.permutation(len(batches))]
        self._plans = {epoch: (key, (batches, tuple(next_carry)))}
        return batches, tuple(next_carry)

    def advance(self, position: Position, count: int) -> Position:
        """The position after ``count`` more global batches."""
        epoch, batch, carry = position.epoch, position.batch + count, position.carry
        while True:
            batches, next_carry = self.plan(epoch, carry)
            if batch < len(batches):
                return Position(epoch, batch, carry, position.delivered + count)
            epoch, batch, carry = epoch + 1, batch - len(batches), next_carry

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start, carry = self.position.epoch, self.position.batch, self.position.carry
        step = 0  # global batches since the start position; worker w takes step % workers == w
        while self.epochs is None or epoch < self.epochs:
            batches, next_carry = self.plan(epoch, carry)
            for k in range(start, len(batches)):
                if step % workers == worker:
                    batch, skips = self.make_batch(epoch, *batches[k]), self.skips.drain()
                    yield {**batch, "skips": skips} if skips else batch
                step += 1
            epoch, start, carry = epoch + 1, 0, next_carry

    # -- one batch: this rank's slice, cropped

    def make_batch(self, epoch: int, bucket: int, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """This rank's slice of one global batch as the training loop's dict."""
        target = self.buckets[bucket]
        mine = [int(i) for i in rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]]
        pixels, conds, used = [], [], []
        for i in mine:
            try:
                image, cond = self.sample(epoch, i, target)
            except (OSError, ValueError) as err:  # a file that broke after indexing: skip and list it
                self._skip(i, err)
                continue
            pixels.append(image)
            conds.append(cond)
            used.append(i)
        if not used:
            raise ValueError(f"every image of a batch ({len(mine)}) failed to decode, {self.skips.count} skipped so far; "
                             f"first reasons: {self.skips.first()}; rescan the data")
        return collate(pixels, conds, self.source.labels[used].tolist(), used, size=len(mine))

    def sample(self, epoch: int, i: int, target: Bucket) -> tuple[np.ndarray, MicroCond]:
        """Sample ``i`` cropped to ``target``: (th, tw, 3) uint8 and its MicroCond."""
        rng = sample_rng(self.seed, epoch, self.source.key(i))
        flip = bool(rng.random() < self.flip_probability)  # drawn first, whatever the path
        if self.cache is not None:
            resized = self.cache.get(i)
        else:
            resized = self.source.load(i, target, background=self.background, fast=self.fast)
        original = tuple(int(v) for v in self.source.original_sizes[i])
        image, cond = crop(resized, original, target, rng, mode=self.crop_mode, flip=flip)
        told = self.source.told_size(i)  # original_size_source: the size the model is told
        return image, cond if told == original else dataclasses.replace(cond, original_size=told)

    def _skip(self, i: int, err: Exception) -> None:
        self.skips.add(self.source.names[i], str(err))

    # -- resume

    def state_dict(self, position: Position | None = None) -> dict[str, Any]:
        """The start position, or ``position`` (:func:`make_loader` passes what was consumed)."""
        p = self.position if position is None else position
        return {"epoch": p.epoch, "batch": p.batch, "carry": [list(c) for c in p.carry], "delivered": p.delivered,
                "seed": self.seed, "global_batch": self.global_batch, "images": len(self.source),
                "buckets": [list(b) for b in self.buckets]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at a saved position; refuses a state saved for another data set or batch."""
        mine = self.state_dict()
        for name in ("seed", "global_batch", "images", "buckets"):
            if state[name] != mine[name]:
                raise ValueError(f"loader state was saved with {name}={state[name]!r}, this loader has "
                                 f"{mine[name]!r}: resume with the same data, buckets, batch size and seed")
        self.position = Position(int(state["epoch"]), int(state["batch"]),
                                 tuple(tuple(int(i) for i in c) for c in state["carry"]), int(state["delivered"]))

    def summary(self) -> dict[str, Any]:
        """Images per bucket, and buckets too small for one global batch (their images wait)."""
        counts = {f"{h}x{w}": len(m) for (h, w), m in zip(self.buckets, self.members) if len(m)}
        return {**self.source.summary(), "per_bucket": counts,
                "cache_failed": len(self.source) - sum(len(m) for m in self.members),
                "starved_buckets": [f"{h}x{w} ({n} images)" for (h, w), n in self.starved]}


class ResumableLoader:
    """Iterates a :class:`BucketBatches` through a DataLoader and counts consumed batches."""

    def __init__(self, dataset: BucketBatches, num_workers: int = 0, prefetch_factor: int = 2) -> None:
        check_num_workers(num_workers)
        self.dataset, self.num_workers, self.prefetch_factor = dataset, num_workers, prefetch_factor
        self.consumed = 0  # global batches handed out since dataset.position
        self.skips = Skips("microcond loader", quiet=True)  # every worker's, merged from the batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.dataset.position, self.consumed = self.dataset.advance(self.dataset.position, self.consumed), 0
        if self.num_workers == 0:
            batches: Any = iter(self.dataset)
        else:
            batches = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                 prefetch_factor=self.prefetch_factor, in_order=True)
        for batch in worker_errors(batches):
            self.skips.merge(batch.pop("skips", ""))
            self.consumed += 1  # counted before the consumer sees it: a checkpoint taken then includes it
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The position after every batch handed out so far; save it with the checkpoint."""
        return self.dataset.state_dict(self.dataset.advance(self.dataset.position, self.consumed))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at a saved position (before iterating)."""
        self.dataset.load_state_dict(state)
        self.consumed = 0


def make_loader(dataset: BucketBatches, num_workers: int = 0) -> ResumableLoader:
    """The iterable a training loop uses: batches in a worker-independent order, resumable."""
    return ResumableLoader(dataset, num_workers=num_workers)


# Decode once into the pixel cache when every bucket is at most this many pixels (64x64 caches
# about 4-5 KB per 4:3 image; at SDXL sizes decoding in the loop is the only option anyway).
CACHE_MAX_AREA = 128 * 128


def open_source(data: str | Path, *, min_original_edge: int = 0, cache_dir: str | Path | None = None,
                size_source: str = "file") -> ImageSource:
    """A folder of images (index from ``microcond scan`` beside it as ``index.parquet``, else scanned
    into the cache), a ``.tar`` shard, or a folder of ``*.tar`` shards. ``size_source`` is the
    original size the MicroConds carry (config ``original_size_source``)."""
    from microcond.data.shards import index_shards

    path = Path(data)
    if path.is_file() and path.suffix == ".tar":
        return index_shards([path], min_original_edge=min_original_edge, size_source=size_source)
    if path.is_dir() and any(path.glob("*.tar")):
        return index_shards(sorted(path.glob("*.tar")), min_original_edge=min_original_edge, size_source=size_source)
    if not path.is_dir():
        raise ValueError(f"data must be an image folder, a .tar shard or a folder of .tar shards; got {str(data)!r}")
    index = path / "index.parquet"
    return ImageSource.from_folder(path, index if index.is_file() else None, min_original_edge=min_original_edge,
                                   cache_dir=cache_dir or default_cache_dir(), size_source=size_source)


def open_training_data(cfg: Any, run_dir: str | Path, *, rank: int, world_size: int, batch_size: int) -> ResumableLoader:
    """The training loop's data from a ``TrainConfig``: source, buckets, pixel cache, loader.

    Rank 0 scans and builds the cache first while the other ranks wait, then they reuse it. The
    summary (counts per bucket, skipped files with reasons) goes to ``run_dir/data.json``.
    """
    from microcond.base.ranks import rank_zero_first
    from microcond.data.buckets import parse_buckets

    buckets = parse_buckets(cfg.buckets or f"square:{cfg.resolution}")
    if is_stream(cfg.data):
        return open_stream(cfg, buckets, run_dir, rank=rank, world_size=world_size, batch_size=batch_size)
    cache = None
    for _ in rank_zero_first(rank):  # the other ranks only read the index and cache rank 0 wrote
        source = open_source(cfg.data, min_original_edge=cfg.min_original_edge, size_source=cfg.original_size_source)
        if max(h * w for h, w in buckets) <= CACHE_MAX_AREA:
            cache = PixelCache.build(source, buckets, default_cache_dir(), progress=rank == 0)
    skipped = source.skipped + ([(name, reason) for _, name, reason in cache.failures] if cache else [])
    usable = len(source) - (len(cache.failures) if cache else 0)
    if rank == 0:  # written before the checks below, so that a refused data set still lists its reasons
        write_data_report(run_dir, {**source.summary(), "usable": usable, "cache": cache.sizes() if cache is not None else None,
                                    "skipped_files": skipped})
    if usable <= 0:
        first = "; ".join(f"{name}: {reason}" for name, reason in skipped[:3])
        raise ValueError(f"no usable image in {cfg.data}: {len(skipped)} skipped, {source.dropped_small} below min_original_edge; "
                         f"first reasons: {first or 'none'} (all listed in {Path(run_dir) / 'data.json'})")
    dataset = BucketBatches(source, buckets, batch_size, seed=cfg.seed, rank=rank, world_size=world_size,
                            crop_mode=cfg.crop_mode, flip_probability=cfg.flip_probability, cache=cache)
    if rank == 0:
        summary = {**dataset.summary(), "usable": usable, "cache": cache.sizes() if cache is not None else None, "skipped_files": skipped}
        write_data_report(run_dir, summary)
        print(f"data: {summary['images']} images in {len(summary['per_bucket'])} buckets, {summary['skipped']} skipped, "
              f"{summary['dropped_small']} below min_original_edge" + (f", pixel cache {cache.sizes()['disk_bytes'] / 2**20:.1f} MiB "
              f"on disk (memory-mapped)" if cache else ""), file=sys.stderr)
        for bucket in summary["starved_buckets"]:
            print(f"data: bucket {bucket} holds fewer images than one global batch: they wait, unused", file=sys.stderr)
    return make_loader(dataset, num_workers=cfg.workers)


def open_stream(cfg: Any, buckets: Sequence[Bucket], run_dir: str | Path, *, rank: int, world_size: int, batch_size: int) -> "StreamLoader":
    """Streamed shards (``cfg.data`` a pipe, URL, brace pattern or ``::`` list): no index, no cache."""
    from microcond.data.stream import ShardStream, StreamLoader

    urls = expand_urls(cfg.data)
    stream = ShardStream(urls, buckets, batch_size, seed=cfg.seed, rank=rank, world_size=world_size, crop_mode=cfg.crop_mode,
                         flip_probability=cfg.flip_probability, shuffle_buffer=cfg.shuffle_buffer,
                         min_original_edge=cfg.min_original_edge, size_source=cfg.original_size_source)
    if rank == 0:
        write_data_report(run_dir, {"stream": True, "shards": len(urls), "shuffle_buffer": cfg.shuffle_buffer, "workers": cfg.workers})
        print(f"data: streaming {len(urls)} shards, shuffle buffer {cfg.shuffle_buffer} samples, {cfg.workers} workers per rank",
              file=sys.stderr)
    return StreamLoader(stream, num_workers=cfg.workers)


def write_data_report(run_dir: str | Path, summary: dict[str, Any]) -> None:
    """``run_dir/data.json``: what the data holds and what was left out, with reasons."""
    from microcond.base.files import atomic_write_text

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / "data.json", json.dumps(summary, indent=2) + "\n")


def report_skips(data: Any, run_dir: str | Path, rank: int, world_size: int, device: torch.device) -> int:
    """Samples skipped while training (every rank's count, rank 0's examples), added to
    ``run_dir/data.json`` by rank 0; returns the count. Call it on every rank."""
    skips = getattr(data, "skips", None)
    count = torch.tensor([skips.count if skips is not None else 0], dtype=torch.int64, device=device)
    if world_size > 1:
        torch.distributed.all_reduce(count)
    total = int(count.item())
    if rank == 0 and skips is not None:
        path = Path(run_dir) / "data.json"
        report = json.loads(path.read_text()) if path.exists() else {}
        write_data_report(run_dir, {**report, "skipped_while_training": {**skips.summary(), "count": total, "examples_from": "rank 0"}})
    return total

