"""WebDataset shards: folder -> shards -> loader round trip, metadata original size, streaming split."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_loader import BUCKETS, EVEN, make_source

from microcond.data.loader import BucketBatches, make_loader
from microcond.data.shards import SHARD_STRIDE, index_shards, write_shards
from microcond.data.stream import ShardStream


@pytest.fixture(scope="module")
def folder_and_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    source = make_source(root / "data", EVEN)
    shards = write_shards(source, root / "out", max_count=5, progress=False)
    return source, shards


def test_round_trip_keeps_images_original_sizes_and_labels(folder_and_shards):
    source, shards = folder_and_shards
    assert len(shards) == 4 and all(p.is_file() for p in shards)
    back = index_shards(shards)
    assert len(back) == len(source) and back.skipped == []
    order = [int(name.rsplit(":", 1)[1]) for name in back.names]  # keys are the folder rows
    assert order == list(range(len(source)))
    assert np.array_equal(back.original_sizes, source.original_sizes)
    assert np.array_equal(back.labels, source.labels)
    assert back.size_from_metadata.all()
    for i in (0, 1, 7):  # same bytes -> same resized pixels
        assert np.array_equal(back.load(i, (32, 32), background=(255, 255, 255), fast=True),
                              source.load(i, (32, 32), background=(255, 255, 255), fast=True))
    a = list(make_loader(BucketBatches(source, BUCKETS, 2, seed=4, epochs=1, flip_probability=0.5)))
    b = list(make_loader(BucketBatches(back, BUCKETS, 2, seed=4, epochs=1, flip_probability=0.5)))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def tar_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def png(h: int, w: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_pre_resized_pixels_keep_the_original_size_from_json(tmp_path):
    # img2dataset-style: pixels resized to 40x60, JSON holds the true 400x600; one sample has no JSON.
    shard = tar_with(tmp_path / "a.tar", {
        "k1.jpg": png(40, 60), "k1.json": json.dumps({"original_height": 400, "original_width": 600}).encode(),
        "k2.png": png(48, 32), "k3.json": b"{}",
    })
    source = index_shards([shard])
    assert source.original_sizes.tolist() == [[400, 600], [48, 32]]
    assert source.size_from_metadata.tolist() == [True, False]
    assert [reason for _, reason in source.skipped] == ["no image member (found ['json'])"]
    stream = ShardStream([shard], ((32, 48), (48, 32)), 1, epochs=1)
    ids = sorted(batch["ids"][0].tolist() for batch in stream)
    assert ids == [[48, 32, 0, 0, 48, 32], [400, 600, 0, 0, 32, 48]]  # original size, crop, bucket


def test_stream_splits_shards_over_two_ranks_and_two_workers_without_overlap(folder_and_shards):
    source, shards = folder_and_shards
    seen = []
    for rank in (0, 1):
        stream = ShardStream(shards, ((32, 32),), 1, rank=rank, world_size=2, seed=2, epochs=1)
        for batch in torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2):
            seen += batch["index"].tolist()
    rows = sorted(index // SHARD_STRIDE * 5 + index % SHARD_STRIDE for index in seen)  # 5 samples per shard
    assert rows == list(range(len(source)))


def test_write_refuses_a_folder_with_shards(folder_and_shards, tmp_path):
    source, shards = folder_and_shards
    with pytest.raises(ValueError, match="already holds"):
        write_shards(source, shards[0].parent, progress=False)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="is an existing file"):
        write_shards(source, tmp_path / "a-file", progress=False)


def test_cli_shard_writes_shards_the_loader_reads(tmp_path, capsys):
    from test_loader import write_images

    from microcond.cli.main import main

    rows = write_images(tmp_path / "data", [(40, 40), (40, 60), (60, 40)])
    code = main(["shard", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--max-count", "2",
                 "--cache", str(tmp_path / "cache")])
    assert code == 0 and "wrote 3 images into 2 shards" in capsys.readouterr().out
    back = index_shards(sorted((tmp_path / "out").glob("*.tar")))
    assert sorted(back.original_sizes.tolist()) == sorted([h, w] for h, w in zip(rows["height"], rows["width"]))
    assert sorted(back.labels.tolist()) == [0, 1, 2]
    assert main(["shard", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]) == 2


BAD_METADATA = {  # key -> (JSON, the reason's words)
    "k1": (b"[]", "expected a JSON object"),
    "k2": (b'"x"', "expected a JSON object"),
    "k3": (b'{"original_height": 1e30, "original_width": 60}', "original_height"),
    "k4": (b'{"original_height": 0, "original_width": 0}', "original_height"),
    "k5": (b'{"original_height": -40, "original_width": 60}', "original_height"),
    "k6": (b'{"original_height": 40, "original_width": 60, "label": 100000000000000000000}', "class label"),
    "k7": (b"{not json", "unreadable"),
}


def test_bad_sample_metadata_is_skipped_and_named_in_the_index_and_the_stream(tmp_path):
    members = {"k0.png": png(40, 60), "k0.json": b'{"original_height": 40, "original_width": 60}'}
    for key, (meta, _) in BAD_METADATA.items():
        members |= {f"{key}.png": png(40, 60), f"{key}.json": meta}
    members["k8.png"] = png(48, 32)  # no JSON: size from the header
    shard = tar_with(tmp_path / "a.tar", members)
    source = index_shards([shard], min_original_edge=1)
    assert [name.rsplit(":", 1)[1] for name in source.names] == ["k0", "k8"] and source.dropped_small == 0
    assert [name for name, _ in source.skipped] == [f"{shard}:{key}" for key in BAD_METADATA]
    for (_, reason), (_, words) in zip(source.skipped, BAD_METADATA.values()):
        assert words in reason, reason
    stream = ShardStream([shard], ((32, 48), (48, 32)), 1, epochs=1)
    ids = sorted(batch["ids"][0].tolist() for batch in stream)
    assert ids == [[40, 60, 0, 0, 32, 48], [48, 32, 0, 0, 48, 32]]
    assert stream.skips.examples == source.skipped and stream.skips.count == len(BAD_METADATA)


def _cut(shard: Path, at_member: str, extra: int) -> Path:
    """A copy of ``shard`` cut ``extra`` bytes after the header of member ``at_member`` begins."""
    with tarfile.open(shard) as tar:
        offset = tar.getmember(at_member).offset
    cut = shard.with_name(f"cut-{at_member}-{extra}.tar")
    cut.write_bytes(shard.read_bytes()[: offset + extra])
    return cut


@pytest.mark.parametrize("at_member, extra, kept", [
    ("k2.png", 512 + 20, ["k0", "k1"]),  # inside k2's image data: k2 cut
    ("k2.png", 0, ["k0"]),  # at a member boundary: k1 may lack members, left out
    ("k2.json", 200, ["k0", "k1"]),  # inside the header of k2's JSON
])
def test_a_truncated_tar_keeps_the_intact_samples_and_reports_the_damage(tmp_path, at_member, extra, kept):
    members = {}
    for k in range(4):
        members |= {f"k{k}.png": png(40, 60), f"k{k}.json": b'{"original_height": 400, "original_width": 600}'}
    shard = _cut(tar_with(tmp_path / "a.tar", members), at_member, extra)
    source = index_shards([shard])
    assert [name.rsplit(":", 1)[1] for name in source.names] == kept
    cut_key = "k1" if kept == ["k0"] else "k2"
    assert [name for name, _ in source.skipped] == [f"{shard}:{cut_key}"]
    assert "damaged tar" in source.skipped[0][1] and f"the {len(kept)} samples before it are kept" in source.skipped[0][1]
    stream = ShardStream([shard], ((32, 48),), 1, epochs=1)
    assert sorted(int(batch["index"][0]) for batch in stream) == list(range(len(kept)))
    assert stream.skips.examples == [(f"{shard}:{cut_key}", source.skipped[0][1])]


def test_shard_json_records_the_path_relative_to_the_folder(folder_and_shards):
    source, shards = folder_and_shards
    with tarfile.open(shards[0]) as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    assert [m["source"] for m in metas] == [Path(name).name for name in source.names[:5]]
    assert not any(os.sep in m["source"] or str(source.root) in json.dumps(m) for m in metas)
