"""Streaming shards: the indexed path's crops, exact resume for any worker count, training from a pipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_loader import BUCKETS, ODD, make_source

from microcond.data.loader import BucketBatches
from microcond.data.shards import SHARD_STRIDE, index_shards, write_shards
from microcond.data.stream import ShardStream, StreamLoader
from microcond.data.urls import expand_urls, is_stream
from microcond.train.checkpoint import list_checkpoints

PER_SHARD = 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    source = make_source(root / "data", ODD)  # 18 images, leftovers in every bucket
    paths = write_shards(source, root / "shards", max_count=PER_SHARD, progress=False)
    return source, paths


def pipe_spec(paths) -> str:
    return f"pipe:cat {paths[0].parent}/shard-{{000000..{len(paths) - 1:06d}}}.tar"


def test_urls_expand_braces_and_lists():
    assert expand_urls("a-{00..02}.tar::pipe:cat b.tar") == ["a-00.tar", "a-01.tar", "a-02.tar", "pipe:cat b.tar"]
    assert is_stream("pipe:cat x.tar") and is_stream("s-{0..3}.tar") and is_stream("https://h/a.tar")
    assert not is_stream("/data/images") and not is_stream("shards/shard-000000.tar")


def test_a_streamed_sample_is_cropped_as_the_indexed_path_crops_it(shards):
    source, paths = shards
    stream = ShardStream(expand_urls(pipe_spec(paths)), BUCKETS, 2, seed=5, shuffle_buffer=4, flip_probability=0.5, epochs=1)
    indexed = BucketBatches(index_shards(paths), BUCKETS, 1, seed=5, flip_probability=0.5)
    seen = []
    for batch in StreamLoader(stream):
        for pixels, ids, index in zip(batch["pixels"], batch["ids"], batch["index"].tolist()):
            row = index // SHARD_STRIDE * PER_SHARD + index % SHARD_STRIDE  # write_shards keys samples by folder row
            image, cond = indexed.sample(0, row, tuple(pixels.shape[1:]))
            assert torch.equal(pixels, torch.from_numpy(image).permute(2, 0, 1)), row
            assert ids.tolist() == list(cond.original_size + cond.crop_top_left + cond.target_size), row
            seen.append(row)
    # Each bucket's leftover (fewer than a batch) waits for the next epoch; the rest came once.
    assert len(seen) == len(set(seen)) >= len(source) - len(BUCKETS)
    assert seen != sorted(seen)  # shuffled across shards


def batches_of(loader, count=None):
    out = []
    for batch in loader:
        out.append({k: v.clone() for k, v in batch.items()})
        if count is not None and len(out) == count:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_any_batch_continues_the_same_stream(shards, workers):
    _, paths = shards

    def loader():
        stream = ShardStream(paths, BUCKETS, 2, seed=3, shuffle_buffer=3, epochs=3, flip_probability=0.5)
        return StreamLoader(stream, num_workers=workers)

    full = batches_of(loader())
    assert len(full) >= 20  # three epochs of 18 images in batches of 2, less what waits at the end
    for cut in (1, 4, 9, len(full) - 1):  # mid-shard, mid-buffer, across epoch ends
        first = loader()
        head = batches_of(first, cut)
        resumed = loader()
        resumed.load_state_dict(first.state_dict())
        rest = batches_of(resumed)
        assert len(head) + len(rest) == len(full), cut
        for k, (a, b) in enumerate(zip(full, head + rest)):
            assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), (cut, k)


def test_resume_refuses_another_worker_count(shards):
    _, paths = shards
    first = StreamLoader(ShardStream(paths, BUCKETS, 2), num_workers=0)
    batches_of(first, 1)
    with pytest.raises(ValueError, match="workers"):
        StreamLoader(ShardStream(paths, BUCKETS, 2), num_workers=2).load_state_dict(first.state_dict())


def test_train_streams_through_a_pipe_and_resumes_bitwise(shards, tmp_path):
    import json

    from test_train import tiny_cfg

    from microcond.train.loop import train

    _, paths = shards
    settings = dict(data=pipe_spec(paths), resolution=32, batch_size=4, checkpoint_every=2, shuffle_buffer=5, flip_probability=0.5)
    cfg = tiny_cfg(**settings, steps=4)
    assert cfg.data == pipe_spec(paths)  # a stream spec is kept as written, not made a path
    train(cfg, tmp_path / "full", progress=False)
    train(tiny_cfg(**settings, steps=2), tmp_path / "split", progress=False)
    train(cfg, tmp_path / "split", progress=False)  # the same command with more steps resumes
    a, b = (load_file(str(list_checkpoints(tmp_path / run / "checkpoints")[-1] / "model.safetensors")) for run in ("full", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)
