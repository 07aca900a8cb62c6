"""original_size_source: the c_size a sample is told (file, effective, or the smaller per axis),
carried by the loader, the shards and the stream alike."""

from __future__ import annotations

import json

import pytest
from test_loader import write_images

from microcond.data.loader import BucketBatches
from microcond.data.shards import index_shards, write_shards
from microcond.data.source import ImageSource, told_size
from microcond.data.stream import ShardStream, StreamLoader
from microcond.train import config as config_mod

SIZES = [(40, 40), (40, 60), (60, 40), (48, 48)]
EFFECTIVE = [(20, 20), (40, 30), None, (48, 48)]  # 2x upscaled, upscaled along one axis, unmeasured, native


def source(folder, size_source: str) -> ImageSource:
    rows = write_images(folder, SIZES)
    rows["effective_height"] = [e[0] if e else None for e in EFFECTIVE]
    rows["effective_width"] = [e[1] if e else None for e in EFFECTIVE]
    labels = {json.loads(line)["file"]: json.loads(line)["label"] for line in (folder / "metadata.jsonl").read_text().splitlines()}
    return ImageSource.from_rows(rows, folder, labels, size_source=size_source)


def told(batches) -> dict[int, list[int]]:
    return {int(i): ids[:2] for batch in batches for i, ids in zip(batch["index"], batch["ids"].tolist())}


@pytest.mark.parametrize("size_source, expected", [
    ("file", SIZES),
    ("effective", [(20, 20), (40, 30), (60, 40), (48, 48)]),
    ("min", [(20, 20), (40, 30), (60, 40), (48, 48)]),
])
def test_the_loader_tells_the_chosen_size_and_crops_by_the_file(tmp_path, size_source, expected):
    src = source(tmp_path / "data", size_source)
    batches = list(BucketBatches(src, ((32, 32),), 1, epochs=1))
    assert told(batches) == {i: list(e) for i, e in enumerate(expected)}
    plain = list(BucketBatches(source(tmp_path / "data", "file"), ((32, 32),), 1, epochs=1))
    for a, b in zip(batches, plain):  # the pixels and the crop are the file's whatever the model is told
        assert (a["pixels"] == b["pixels"]).all() and (a["ids"][:, 2:] == b["ids"][:, 2:]).all()
    assert src.summary()["effective_unmeasured"] == 1


def test_min_takes_the_smaller_per_axis_and_unmeasured_falls_back_to_the_file():
    assert told_size((40, 60), (50, 30), "min") == (40, 30)
    assert told_size((40, 60), None, "effective") == (40, 60)
    assert told_size((40, 60), (20, 30), "file") == (40, 60)


def test_effective_without_measured_sizes_is_refused_with_the_fix(tmp_path):
    rows = write_images(tmp_path / "data", SIZES)
    with pytest.raises(ValueError, match="scan DIR --out INDEX --effective"):
        ImageSource.from_rows(rows, tmp_path / "data", {}, size_source="effective")
    with pytest.raises(ValueError, match="original_size_source"):
        config_mod.resolve("tiny", overrides={"original_size_source": "exif"})


def test_shards_and_the_stream_carry_the_effective_size(tmp_path):
    shards = write_shards(source(tmp_path / "data", "file"), tmp_path / "shards", max_count=2, progress=False)
    indexed = index_shards(shards, size_source="effective")
    assert [indexed.told_size(i) for i in range(len(indexed))] == [(20, 20), (40, 30), (60, 40), (48, 48)]
    stream = ShardStream(shards, ((32, 32),), 1, epochs=1, size_source="effective")
    streamed = {tuple(ids[:2]) for batch in StreamLoader(stream) for ids in batch["ids"].tolist()}
    assert streamed == {(20, 20), (40, 30), (60, 40), (48, 48)}
    bare = ImageSource.from_rows(write_images(tmp_path / "bare", SIZES), tmp_path / "bare", {})
    with pytest.raises(ValueError, match="scan DIR --effective"):  # shards written without effective sizes
        index_shards(write_shards(bare, tmp_path / "bare-shards", progress=False), size_source="effective")
