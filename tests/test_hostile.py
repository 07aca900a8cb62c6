"""Hostile inputs, round 3: data that yields nothing, skips that must be counted, loader workers'
errors, and the reports a bad data set must still leave behind. Each test names its defect."""

from __future__ import annotations

import json

import pytest

from microcond.config import TrainConfig
from microcond.data.loader import open_training_data
from microcond.data.skips import Skips
from microcond.data.stream import ShardStream, StreamLoader
from test_shards import png, tar_with

BUCKETS = ((32, 48),)


def _bad_aspect_shard(path, n=4):
    """Samples whose JSON original size has another aspect than their pixels: each fails to decode."""
    members = {}
    for k in range(n):
        members |= {f"k{k}.png": png(40, 60), f"k{k}.json": b'{"original_height": 600, "original_width": 400}'}
    return tar_with(path, members)


def test_1_a_stream_where_every_sample_fails_to_decode_stops_with_counts(tmp_path, capsys):
    shards = [_bad_aspect_shard(tmp_path / f"s{k}.tar") for k in range(2)]
    stream = ShardStream(shards, BUCKETS, 2, epochs=50)  # before the fix: 50 silent epochs, then nothing
    with pytest.raises(ValueError, match=r"gave no usable sample: 8 read, 0 decoded, 8 skipped.*first reasons: .*s\d\.tar:k\d"):
        next(iter(StreamLoader(stream)))
    printed = capsys.readouterr().err.splitlines()
    assert len([line for line in printed if "skipped" in line]) <= stream.skips.echo + 1  # not one line per skip for ever


def test_1_a_stream_with_some_bad_samples_trains_and_counts_them(tmp_path):
    good = [tar_with(tmp_path / f"good{k}.tar", {f"g{k}{j}.png": png(40, 60) for j in range(4)}) for k in range(3)]
    loader = StreamLoader(ShardStream([_bad_aspect_shard(tmp_path / "bad.tar"), *good], BUCKETS, 2, epochs=3), num_workers=2)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 3 * 12  # every good sample of every epoch
    assert loader.skips.count == 3 * 4  # every bad sample of every epoch, counted in the main process
    assert len(loader.skips.kinds) == 1 and "another aspect" in next(iter(loader.skips.kinds))


def test_2_indexed_shards_with_no_valid_sample_name_the_reasons_and_write_data_json(tmp_path):
    shard = _bad_aspect_shard(tmp_path / "bad.tar")
    bad_json = tar_with(tmp_path / "worse.tar", {"k0.png": png(40, 60), "k0.json": b"{not json"})
    for data in (shard, bad_json):
        run = tmp_path / f"run-{data.stem}"
        cfg = TrainConfig(data=str(data), resolution=32)
        with pytest.raises(ValueError, match=r"no usable image in .*skipped.*first reasons: .*\.tar:k0: .*data\.json"):
            open_training_data(cfg, run, rank=0, world_size=1, batch_size=2)
        report = json.loads((run / "data.json").read_text())
        assert report["usable"] == 0 and len(report["skipped_files"]) == report["images"] + report["skipped"] > 0


def test_7_more_loader_workers_than_shards_is_one_line_before_any_worker_starts(tmp_path):
    shards = [tar_with(tmp_path / f"s{k}.tar", {f"k{k}.png": png(40, 60)}) for k in range(2)]
    with pytest.raises(ValueError, match=r"^2 shard\(s\) for 1 rank\(s\) x 4 loader worker\(s\).*--workers 2") as err:
        StreamLoader(ShardStream(shards, BUCKETS, 1), num_workers=4)
    assert "\n" not in str(err.value)


def test_7_a_loader_workers_error_is_its_own_line_not_its_traceback(tmp_path):
    shards = [_bad_aspect_shard(tmp_path / f"s{k}.tar") for k in range(2)]
    with pytest.raises(ValueError) as err:
        list(StreamLoader(ShardStream(shards, BUCKETS, 2, epochs=5), num_workers=2))
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    assert str(err.value).startswith("a whole epoch of 1 shard(s)")


def test_skips_stay_bounded_and_merge_across_processes(capsys):
    worker, main = Skips("w", keep=3, echo=2), Skips("m", keep=3, quiet=True)
    for k in range(1000):
        worker.add(f"s:{k}", f"decoded size ({k}, 40) differs")
        if k % 100 == 99:
            main.merge(worker.drain())
    assert worker.drain() == "" and main.count == worker.count == 1000
    assert main.kinds == {"decoded size (N, N) differs": 1000} and len(main.examples) == 3
    assert len(capsys.readouterr().err.splitlines()) == 3  # two skips and one "counted, not printed"
