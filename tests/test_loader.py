"""The loader: one bucket per batch, exact split over ranks and workers, carry, resume, cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from microcond.data.loader import BucketBatches, make_loader
from microcond.data.pixelcache import PixelCache, cache_key
from microcond.data.source import ImageSource

BUCKETS = ((32, 32), (32, 48), (48, 32))


def write_images(folder: Path, sizes: list[tuple[int, int]]) -> dict[str, list]:
    """Tiny images (h, w) alternating PNG / JPEG, and index columns like the scan's."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {k: [] for k in ("path", "height", "width", "bytes", "mtime_ns", "status", "reason")}
    labels = []
    for k, (h, w) in enumerate(sizes):
        path = folder / (f"img{k:03d}.png" if k % 2 else f"img{k:03d}.jpg")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        stat = path.stat()
        for key, value in zip(rows, (str(path), h, w, stat.st_size, stat.st_mtime_ns, "ok", "")):
            rows[key].append(value)
        labels.append({"file": path.name, "label": k % 3})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    return rows


def make_source(folder: Path, sizes: list[tuple[int, int]]) -> ImageSource:
    rows = write_images(folder, sizes)
    labels = {json.loads(l)["file"]: json.loads(l)["label"] for l in (folder / "metadata.jsonl").read_text().splitlines()}
    return ImageSource.from_rows(rows, folder, labels)


# 8 square, 8 wide, 4 tall: every bucket a multiple of the global batch 4.
EVEN = [(40, 40)] * 8 + [(40, 60)] * 8 + [(60, 40)] * 4
# 7 square, 5 wide, 6 tall: leftovers in every bucket for a global batch of 4.
ODD = [(40, 40)] * 7 + [(40, 60)] * 5 + [(60, 40)] * 6


@pytest.fixture(scope="module")
def even(tmp_path_factory) -> ImageSource:
    return make_source(tmp_path_factory.mktemp("even"), EVEN)


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> ImageSource:
    return make_source(tmp_path_factory.mktemp("odd"), ODD)


def batches(source: ImageSource, workers: int = 0, **kw) -> list[dict[str, torch.Tensor]]:
    kw = {"seed": 3, "epochs": 1, "flip_probability": 0.5, **kw}
    return list(make_loader(BucketBatches(source, BUCKETS, kw.pop("batch_size", 2), **kw), num_workers=workers))


def test_two_ranks_two_workers_each_image_exactly_once_per_epoch(even):
    seen = []
    for rank in (0, 1):
        for batch in batches(even, workers=2, rank=rank, world_size=2):
            target = tuple(batch["ids"][0, 4:].tolist())
            assert batch["pixels"].dtype == torch.uint8 and batch["pixels"].shape == (2, 3, *target)
            assert (batch["ids"][:, 4:] == torch.tensor(target)).all()  # one bucket per batch
            for i, ids in zip(batch["index"].tolist(), batch["ids"].tolist()):
                h, w = even.original_sizes[i]
                assert tuple(ids[:2]) == (h, w)
            seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(even)))


def test_two_ranks_see_exactly_what_one_process_with_double_batch_sees(even):
    single = batches(even, batch_size=4)
    ranks = [batches(even, rank=r, world_size=2) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 5
    for whole, part0, part1 in zip(single, *ranks):
        for key in whole:
            assert torch.equal(whole[key], torch.cat([part0[key], part1[key]]))


def test_number_of_workers_does_not_change_the_stream(odd):
    reference = batches(odd, epochs=2)
    for workers in (1, 2):
        other = batches(odd, workers=workers, epochs=2)
        assert len(other) == len(reference)
        for a, b in zip(reference, other):
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_labels_come_from_metadata_and_rows(odd):
    for batch in batches(odd):
        assert batch["labels"].tolist() == [i % 3 for i in batch["index"].tolist()]


def test_leftovers_lead_the_next_epoch_and_nothing_repeats_within_one(odd):
    dataset = BucketBatches(odd, BUCKETS, 2, world_size=2, rank=0, seed=1)
    carry = tuple(() for _ in BUCKETS)
    missed_before: set[int] = set()
    for epoch in range(4):
        plan, next_carry = dataset.plan(epoch, carry)
        rows = np.concatenate([r for _, r in plan]).tolist()
        assert len(rows) == len(set(rows))  # at most once per epoch
        assert set(rows) | {i for c in next_carry for i in c} == set(range(len(odd)))  # no loss
        for b, first in enumerate(carry):  # last epoch's leftovers open the bucket's first batch
            if first:
                opening = next(r for bucket, r in plan if bucket == b)
                assert opening[: len(first)].tolist() == list(first)
        missed = set(range(len(odd))) - set(rows)
        assert not missed & missed_before  # never left out of two epochs in a row
        missed_before, carry = missed, next_carry


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_loader_yields_the_same_sequence_as_an_uninterrupted_one(odd, workers):
    def dataset():
        return BucketBatches(odd, BUCKETS, 2, seed=5, epochs=3, flip_probability=0.5)

    full = list(make_loader(dataset()))
    first = make_loader(dataset(), num_workers=workers)
    head = []
    for batch in first:
        head.append(batch)
        if len(head) == 7:  # stop mid-epoch 1 (4 + 4 + 3 batches per epoch here)
            break
    state = json.loads(json.dumps(first.state_dict()))  # a checkpoint stores it as plain data
    assert state["delivered"] == 7
    resumed = make_loader(dataset(), num_workers=workers)
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert len(head) + len(tail) == len(full)
    for a, b in zip(head + tail, full):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_state_from_other_settings(odd):
    state = make_loader(BucketBatches(odd, BUCKETS, 2, seed=0)).state_dict()
    with pytest.raises(ValueError, match="global_batch"):
        BucketBatches(odd, BUCKETS, 3, seed=0).load_state_dict(state)


def test_cached_and_decoded_paths_give_identical_pixels_and_conditions(odd, tmp_path):
    cache = PixelCache.build(odd, BUCKETS, tmp_path, processes=2, progress=False)
    assert cache.failures == []
    sizes = cache.sizes()
    assert sizes["pixel_bytes"] == sum(cache.get(i).nbytes for i in range(len(odd))) and sizes["disk_bytes"] > sizes["pixel_bytes"]
    decoded = batches(odd, epochs=2)
    cached = batches(odd, epochs=2, cache=cache, workers=2)
    assert len(decoded) == len(cached)
    for a, b in zip(decoded, cached):
        assert all(torch.equal(a[k], b[k]) for k in a)
    again = PixelCache.build(odd, BUCKETS, tmp_path, progress=False)  # same key: reused, not rebuilt
    assert again.folder == cache.folder and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(ValueError, match="pixel cache"):  # a cache of other settings is refused
        BucketBatches(odd, BUCKETS, 2, cache=cache, background=(0, 0, 0))


def test_cache_key_changes_with_what_changes_the_pixels(odd):
    key = cache_key(odd, BUCKETS, (255, 255, 255), True)
    assert key == cache_key(odd, BUCKETS, (255, 255, 255), True)
    assert key != cache_key(odd, BUCKETS[:2], (255, 255, 255), True)
    assert key != cache_key(odd, BUCKETS, (0, 0, 0), True)
    assert key != cache_key(odd, BUCKETS, (255, 255, 255), False)
    touched = ImageSource(**{**odd.__dict__, "stamps": odd.stamps + np.array([0, 1])})
    assert key != cache_key(touched, BUCKETS, (255, 255, 255), True)


def test_a_file_broken_after_indexing_is_skipped_and_listed(tmp_path):
    source = make_source(tmp_path / "data", EVEN)
    broken = source.names[3]
    Path(broken).write_bytes(b"not an image")
    dataset = BucketBatches(source, BUCKETS, 4, seed=0, epochs=1)
    out = list(make_loader(dataset))
    assert all(b["pixels"].shape[0] == 4 for b in out)  # batch shape kept
    assert [name for name, _ in dataset.skips.examples] == [broken]
    assert 3 not in torch.cat([b["index"] for b in out]).tolist()
    cache = PixelCache.build(source, BUCKETS, tmp_path / "cache", progress=False)
    assert cache.failed_rows() == [3] and broken in cache.failures[0][1]
    cached = BucketBatches(source, BUCKETS, 4, seed=0, epochs=1, cache=cache)
    assert cached.summary()["cache_failed"] == 1
    assert 3 not in torch.cat([b["index"] for b in make_loader(cached)]).tolist()


def test_index_problems_are_listed_and_small_images_counted(tmp_path):
    rows = write_images(tmp_path, [(40, 40), (20, 60), (40, 60)])
    rows["status"][2], rows["reason"][2] = "error", "truncated file"
    source = ImageSource.from_rows(rows, tmp_path, {}, min_original_edge=32)
    assert source.names == [rows["path"][0]]
    assert source.skipped == [(rows["path"][2], "error: truncated file")]
    assert source.summary() == {"images": 1, "skipped": 1, "dropped_small": 1, "labelled": 0, "original_size_source": "file"}


def test_clear_errors_for_bad_settings(odd, tmp_path):
    with pytest.raises(ValueError, match="no bucket holds a full global batch"):
        BucketBatches(odd, BUCKETS, 8)
    with pytest.raises(ValueError, match="crop_mode"):
        BucketBatches(odd, BUCKETS, 2, crop_mode="middle")
    with pytest.raises(ValueError, match="rank"):
        BucketBatches(odd, BUCKETS, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="index_path"):
        ImageSource.from_folder(tmp_path)


def test_buckets_too_small_for_a_batch_are_reported(odd):
    dataset = BucketBatches(odd, BUCKETS, 3, world_size=2)  # global 6: 5 wide images wait forever
    assert dataset.summary()["starved_buckets"] == ["32x48 (5 images)"]


def test_from_folder_scans_into_the_cache_dir_and_reads_labels(tmp_path):
    rows = write_images(tmp_path / "data", [(40, 40), (40, 60), (60, 40), (50, 50)])
    before = sorted(p.name for p in (tmp_path / "data").iterdir())
    source = ImageSource.from_folder(tmp_path / "data", cache_dir=tmp_path / "cache", min_original_edge=45)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == before  # nothing written into the data
    assert any((tmp_path / "cache").glob("index-*.parquet"))
    assert sorted(source.names) == sorted(rows["path"][3:])  # only 50x50 has a short edge >= 45
    assert source.dropped_small == 3 and source.labels.tolist() == [0] and source.original_sizes.tolist() == [[50, 50]]
