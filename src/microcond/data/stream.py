"""Training from shards that are not indexed: WebDataset-style streaming, with exact resume.

``--data`` names a stream when it is a ``pipe:`` command, a URL, a brace pattern or a ``::``
separated list (WebDataset's spellings)::

    microcond train --data 'pipe:cat /data/shards/shard-{000000..000099}.tar' ...
    microcond train --data 'https://host/a-{000..009}.tar::https://host/b-{000..004}.tar' ...

Shards are read once, in order, through :func:`~microcond.data.urls.open_url` (files, URLs, pipes,
whose commands die with their reader); nothing is
indexed first. Each epoch the shard list is shuffled by ``(seed, epoch)``; rank ``r`` takes
shards ``r::world_size`` and its DataLoader worker ``w`` of those takes ``w::num_workers``
(``webdataset.split_by_node`` / ``split_by_worker``, with explicit rank and seed). Samples pass
a shuffle buffer (``shuffle_buffer`` samples; a full buffer hands out a random one, the epoch's
end drains it), then per-bucket buffers; a full bucket buffer is a batch, and partly filled
ones carry over to the next epoch, so no sample is dropped.

The per-sample random choices (crop, flip) are those of the indexed loader: the generator of
:func:`~microcond.data.source.sample_rng` keyed by the sample's key (:func:`sample_key`), so a
sample streamed in epoch ``e`` is cropped exactly as the indexed path crops it in epoch ``e``.
Every other choice is keyed by the stream position, so the stream is a pure function of the
shards, the seed and the split.

Resume: every batch carries its worker's position (epoch, shard, sample, and the keys waiting in
the buffers), and :class:`StreamLoader` keeps the position of the last batch consumed from each
worker. A resumed stream skips the shards before its position unopened, skips the samples
before it in that shard undecoded, and reads the few shards that hold the waiting samples once
more. Resume needs the same shards, seed, buckets, batch size, buffer size and worker count.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tarfile
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from microcond.data.buckets import Bucket, assign_bucket
from microcond.data.crop import CROP_MODES, crop, load_resized
from microcond.data.shards import SHARD_STRIDE, sample_info, sample_key, tar_samples
from microcond.data.skips import Skips, check_num_workers, worker_errors
from microcond.data.source import SHUFFLE_STREAM, SIZE_SOURCES, collate, sample_rng, told_size
from microcond.data.urls import open_url

BUFFER_STREAM = 2  # SeedSequence tag of the shuffle buffer's picks (source.py holds 0 and 1)


@dataclass
class StreamPosition:
    """Where one worker's stream stands, after the batch that carries it.

    ``shard`` shards of the epoch's list are read, and ``sample`` raw samples of the next one;
    ``shuffle`` and ``waiting`` (per bucket) hold the keys of samples read but not yet batched.
    """

    role: int = 0
    epoch: int = 0
    shard: int = 0
    sample: int = 0
    shuffle: list[int] = field(default_factory=list)
    waiting: list[list[int]] = field(default_factory=list)


@dataclass
class _Item:
    index: int  # shard * SHARD_STRIDE + position: finds the sample again on resume
    key: int  # the crop generator's key (sample_key of the tar key)
    name: str
    data: bytes
    size: tuple[int, int]
    given: tuple[int, int] | None  # the JSON's original size (pixels may be pre-resized), else None
    label: int
    told: tuple[int, int]  # the original size the MicroCond carries (original_size_source)


class ShardStream(IterableDataset):
    """Per-rank batches of one bucket each from streamed shards (module doc). Iterate it through
    :class:`StreamLoader`; a batch is the loader's dict plus ``"position"`` (JSON text)."""

    def __init__(self, urls: Sequence[str], buckets: Sequence[Bucket], batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, crop_mode: str = "random", flip_probability: float = 0.0,
                 shuffle_buffer: int = 0, min_original_edge: int = 0, size_source: str = "file", epochs: int | None = None, background: tuple[int, int, int] = (255, 255, 255),
                 fast: bool = True) -> None:
        self.urls = sorted(str(u) for u in urls)
        check_shards(len(self.urls), world_size, 1)
        if crop_mode not in CROP_MODES or not 0.0 <= flip_probability <= 1.0 or batch_size < 1 or shuffle_buffer < 0:
            raise ValueError(f"expected crop_mode in {CROP_MODES}, flip_probability in [0, 1], batch_size >= 1 and "
                             f"shuffle_buffer >= 0, got {crop_mode!r}, {flip_probability}, {batch_size}, {shuffle_buffer}")
        self.buckets, self.batch_size, self.seed = tuple(tuple(b) for b in buckets), batch_size, int(seed)
        self.rank, self.world_size, self.crop_mode, self.flip_probability = rank, world_size, crop_mode, flip_probability
        self.shuffle_buffer, self.epochs, self.background, self.fast = shuffle_buffer, epochs, tuple(background), fast
        self.min_original_edge = min_original_edge  # smaller originals are left out (counted in dropped_small)
        self.dropped_small = 0
        if size_source not in SIZE_SOURCES:
            raise ValueError(f"original_size_source must be one of {SIZE_SOURCES}, got {size_source!r}")
        self.size_source = size_source  # a sample without effective_height/width in its JSON is told its file size
        self.starts: dict[int, StreamPosition] = {}  # role -> where it resumes (StreamLoader sets these)
        self.rotate = 0  # DataLoader worker w plays role (w + rotate) % workers
        self.skips = Skips("microcond stream")
        self.decoded = 0  # samples decoded into a batch by this process

    def my_shards(self, epoch: int, role: int, workers: int) -> list[int]:
        """Shard numbers (positions in the sorted URL list) that this rank's ``role`` reads in ``epoch``."""
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([self.seed, SHUFFLE_STREAM, epoch])))
        return [int(s) for s in rng.permutation(len(self.urls))[self.rank::self.world_size][role::workers]]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        role = (worker + self.rotate) % workers
        check_shards(len(self.urls), self.world_size, workers)
        start = self.starts.get(role, StreamPosition(role=role, waiting=[[] for _ in self.buckets]))
        yield from self._run(start, workers)

    def _run(self, at: StreamPosition, workers: int) -> Iterator[dict[str, Any]]:
        found = self._fetch(at.shuffle + [k for keys in at.waiting for k in keys])
        shuffle = [found[i] for i in at.shuffle]
        waiting = {b: [found[i] for i in keys] for b, keys in zip(self.buckets, at.waiting)}
        epoch, first_shard, skip = at.epoch, at.shard, at.sample
        while self.epochs is None or epoch < self.epochs:
            mine, whole, read = self.my_shards(epoch, at.role, workers), first_shard == 0 and skip == 0, 0
            failed_before = self.skips.count
            for s in range(first_shard, len(mine)):
                for position, name, files in self._samples(mine[s], skip):
                    item = self._item(mine[s], position, name, files)
                    if item is None:
                        continue
                    read += 1
                    shuffle.append(item)
                    if len(shuffle) > self.shuffle_buffer:
                        pick = self._pick(epoch, mine[s] * SHARD_STRIDE + position, len(shuffle))
                        shuffle[pick], shuffle[-1] = shuffle[-1], shuffle[pick]
                        yield from self._place(shuffle.pop(), waiting, at.role, epoch, s, position + 1, shuffle)
                skip = 0
            while shuffle:  # the epoch's end drains the buffer
                pick = self._pick(epoch, -1, len(shuffle))
                shuffle[pick], shuffle[-1] = shuffle[-1], shuffle[pick]
                yield from self._place(shuffle.pop(), waiting, at.role, epoch, len(mine), 0, shuffle)
            # A whole epoch that gave nothing usable would repeat for ever: stop with the counts.
            failed = self.skips.count - failed_before
            if whole and (read == 0 or (self.decoded == 0 and failed >= read)):
                shards = [self.urls[s] for s in mine]
                raise ValueError(f"a whole epoch of {len(shards)} shard(s) ({shards[0]}{' ...' if len(shards) > 1 else ''}) gave no usable "
                                 f"sample: {read} read, {self.decoded} decoded, {self.skips.count} skipped, {self.dropped_small} below "
                                 f"min_original_edge (every rank and loader worker needs usable samples in its share of the shards); "
                                 f"first reasons: {self.skips.first(2) or 'none'}")
            epoch, first_shard = epoch + 1, 0
        left = sum(len(items) for items in waiting.values())
        if left:
            print(f"microcond stream: {left} images in partly filled buckets at the end of the last epoch", file=sys.stderr)

    def _pick(self, epoch: int, where: int, size: int) -> int:
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence(
            [self.seed, BUFFER_STREAM, self.rank, epoch, where % 2**63, size])))
        return int(rng.integers(size))

    def _place(self, item: _Item, waiting: dict[Bucket, list[_Item]], role: int, epoch: int, shard: int, sample: int,
               shuffle: list[_Item]) -> Iterator[dict[str, Any]]:
        """Put ``item`` in its bucket's buffer; yield the batch it completes, with the position after it."""
        bucket = assign_bucket(item.size[0], item.size[1], self.buckets)
        waiting[bucket].append(item)
        if len(waiting[bucket]) < self.batch_size:
            return
        items, waiting[bucket] = waiting[bucket], []
        batch = self._batch(epoch, bucket, items)
        if batch is not None:
            position = StreamPosition(role, epoch, shard, sample, [i.index for i in shuffle],
                                      [[i.index for i in waiting[b]] for b in self.buckets])
            skips = self.skips.drain()
            yield {**batch, "position": json.dumps(asdict(position)), **({"skips": skips} if skips else {})}

    def _samples(self, shard: int, skip: int = 0, report: bool = True) -> Iterator[tuple[int, str, dict[str, bytes]]]:
        """(position, ``url:key``, {ext: bytes}) of one shard from sample ``skip`` on; damage listed if ``report``."""
        url, damage = self.urls[shard], []
        try:
            with open_url(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
                for position, (key, files) in enumerate(tar_samples(tar, lambda member: tar.extractfile(member).read(), damage)):
                    if position >= skip:
                        yield position, f"{url}:{key}", files
        except (OSError, tarfile.TarError) as err:
            damage.append((None, f"unreadable tar ({err})"))
        for key, reason in damage if report else ():
            self._skip(url if key is None else f"{url}:{key}", reason)

    def _item(self, shard: int, position: int, name: str, files: dict[str, bytes]) -> _Item | None:
        try:
            data, size, from_meta, label, effective = sample_info(files, lambda data: data)
        except ValueError as err:
            self._skip(name, str(err))
            return None
        if min(size) < self.min_original_edge:
            self.dropped_small += 1
            return None
        return _Item(shard * SHARD_STRIDE + position, sample_key(name.rsplit(":", 1)[1]), name, data, size,
                     size if from_meta else None, label, told_size(size, effective, self.size_source))

    def _fetch(self, indices: list[int]) -> dict[int, _Item]:
        """The samples at ``indices`` (waiting when the position was saved), read again from their shards."""
        found: dict[int, _Item] = {}
        for shard in sorted({i // SHARD_STRIDE for i in indices}):
            wanted = {i % SHARD_STRIDE for i in indices if i // SHARD_STRIDE == shard}
            for position, name, files in self._samples(shard, report=False):  # read whole: a pipe cut short fails
                if position in wanted:
                    found[shard * SHARD_STRIDE + position] = self._item(shard, position, name, files)
        missing = [i for i in indices if found.get(i) is None]
        if missing:
            raise ValueError(f"cannot resume the stream: samples {missing[:4]} waiting at the saved position are gone "
                             "from their shards; resume with the same shards")
        return found

    def _batch(self, epoch: int, bucket: Bucket, items: list[_Item]) -> dict[str, torch.Tensor] | None:
        pixels, conds, labels, indices = [], [], [], []
        for item in items:
            rng = sample_rng(self.seed, epoch, item.key)
            flip = bool(rng.random() < self.flip_probability)  # same draw order as the indexed loader
            try:
                resized, original = load_resized(item.data, bucket, original_size=item.given, background=self.background, fast=self.fast)
            except ValueError as err:
                self._skip(item.name, str(err))
                continue
            image, cond = crop(resized, original, bucket, rng, mode=self.crop_mode, flip=flip)
            if item.told != tuple(original):
                cond = dataclasses.replace(cond, original_size=item.told)
            pixels.append(image), conds.append(cond), labels.append(item.label), indices.append(item.index)
        self.decoded += len(pixels)
        if not pixels:
            return None
        return collate(pixels, conds, labels, indices, size=len(items))

    def _skip(self, name: str, reason: str) -> None:
        self.skips.add(name, reason)


def check_shards(shards: int, world_size: int, workers: int) -> None:
    """Refuse a layout with a rank or loader worker that would read no shard."""
    if shards < world_size * workers:
        raise ValueError(f"{shards} shard(s) for {world_size} rank(s) x {workers} loader worker(s): every worker needs a shard; "
                         f"use --workers {max(shards // world_size, 0)} or fewer processes (--nproc), or write more, smaller shards "
                         "(microcond shard --max-count)")


class StreamLoader:
    """Iterates a :class:`ShardStream` (through a DataLoader with ``num_workers``) and keeps, per
    worker, the position after the last batch handed out: the state a checkpoint saves."""

    def __init__(self, stream: ShardStream, num_workers: int = 0, prefetch_factor: int = 2) -> None:
        check_num_workers(num_workers)
        self.stream, self.num_workers, self.prefetch_factor = stream, num_workers, prefetch_factor
        self.roles = max(num_workers, 1)
        check_shards(len(stream.urls), stream.world_size, self.roles)  # here, not in a worker's traceback
        self.skips = Skips("microcond stream", quiet=True)  # every worker's, merged from the batches
        self.positions: dict[int, dict[str, Any]] = {}
        self.next_role = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.stream.starts = {role: StreamPosition(**p) for role, p in self.positions.items()}
        self.stream.rotate = self.next_role  # the first batch comes from DataLoader worker 0
        batches: Any = iter(self.stream) if self.num_workers == 0 else DataLoader(
            self.stream, batch_size=None, num_workers=self.num_workers, prefetch_factor=self.prefetch_factor, in_order=True)
        for batch in worker_errors(batches):
            position = json.loads(batch.pop("position"))
            self.skips.merge(batch.pop("skips", ""))
            self.positions[position["role"]] = position
            self.next_role = (position["role"] + 1) % self.roles
            yield batch

    def state_dict(self) -> dict[str, Any]:
        s = self.stream
        return {"stream": True, "positions": {str(r): p for r, p in self.positions.items()}, "next_role": self.next_role,
                "workers": self.roles, "seed": s.seed, "batch_size": s.batch_size, "shards": len(s.urls),
                "buckets": [list(b) for b in s.buckets], "shuffle_buffer": s.shuffle_buffer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batches a saved state had handed out; refuses another stream setup."""
        mine = self.state_dict()
        for name in ("stream", "workers", "seed", "batch_size", "shards", "buckets", "shuffle_buffer"):
            if state.get(name) != mine[name]:
                raise ValueError(f"data state was saved with {name}={state.get(name)!r}, this stream has {mine[name]!r}: "
                                 "resume a streamed run with the same shards, workers, buckets, batch size, buffer and seed")
        self.positions = {int(r): p for r, p in state["positions"].items()}
        self.next_role = int(state["next_role"])
