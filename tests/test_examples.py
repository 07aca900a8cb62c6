"""The library path: microcond's public names, its crop step against the training loader's crop,
and the three scripts under examples/ run on tiny data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BUCKETS = ((32, 48), (48, 32), (32, 32))


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_public_names_are_importable_from_the_package_and_data():
    import microcond
    import microcond.data

    for name in microcond.__all__:
        assert getattr(microcond, name) is not None, name
    for name in microcond.data.__all__:
        assert getattr(microcond.data, name) is not None, name
    assert {"CropStep", "MicroCondXLPipeline", "combine_guidance", "read_sizes", "time_ids"} <= set(microcond.__all__)


def test_the_crop_step_crops_a_sample_as_the_training_loader_does(image_folder, tmp_path):
    from microcond.data import CropStep
    from microcond.data.loader import BucketBatches
    from microcond.data.shards import index_shards, write_shards
    from test_loader import make_source

    source = make_source(tmp_path / "data", [(40, 60), (60, 40), (50, 50), (33, 70), (70, 20)])
    shards = write_shards(source, tmp_path / "shards", max_count=10, progress=False)
    indexed = index_shards(shards)
    loader = BucketBatches(indexed, BUCKETS, 1, seed=5, flip_probability=0.5)
    for epoch in (0, 3):
        step = CropStep(buckets=BUCKETS, seed=5, epoch=epoch, flip_probability=0.5)
        for row, name in enumerate(indexed.names):
            key = name.rsplit(":", 1)[1]
            data = Path(source.names[row]).read_bytes()
            out = step({"__key__": key, "png": data, "original_size": tuple(indexed.original_sizes[row])})
            image, cond = loader.sample(epoch, row, out["bucket"])
            assert torch.equal(out["pixels"], torch.from_numpy(image).permute(2, 0, 1)), (epoch, row)
            assert out["time_ids"].tolist() == list(cond.ids) and out["micro_cond"] == cond


def test_the_crop_step_reads_bytes_paths_and_decoded_images_alike(tmp_path):
    from microcond.data import CropStep

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 80, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    step = CropStep(buckets="square:32", seed=2, flip_probability=0.5)
    outs = [step({"__key__": "a", "image": v}) for v in (str(tmp_path / "a.png"), (tmp_path / "a.png").read_bytes(), Image.open(tmp_path / "a.png"))]
    assert all(torch.equal(o["pixels"], outs[0]["pixels"]) and torch.equal(o["time_ids"], outs[0]["time_ids"]) for o in outs)
    assert outs[0]["time_ids"].tolist()[:2] == [40, 80] and outs[0]["bucket"] == (32, 32)
    told = CropStep(buckets="square:32", seed=2, sizes={"a": (10, 20)})({"__key__": "a", "image": str(tmp_path / "a.png")})
    assert told["time_ids"].tolist()[:2] == [10, 20]  # an effective size told instead of the file's
    with pytest.raises(ValueError, match="no image in the sample"):
        step({"__key__": "b", "txt": b"hello"})


def test_read_sizes_gives_file_and_effective_sizes_by_path(image_folder, tmp_path):
    from microcond.data import read_sizes
    from microcond.data.scan import scan

    index = tmp_path / "index.parquet"
    scan([image_folder], index, effective=True, workers=1, progress=False)
    files, effective = read_sizes(index, effective=False), read_sizes(index)
    name = str(image_folder / "img01.png")
    with Image.open(name) as image:
        assert files[name] == (image.height, image.width)
    assert len(files) == len(effective) == 24 and all(e[0] <= f[0] and e[1] <= f[1] for f, e in zip(files.values(), effective.values()))


def test_example_own_loop_trains_a_diffusers_unet(image_folder, capsys):
    losses = load_example("own_loop").main([str(image_folder), "--steps", "4", "--resolution", "16", "--batch-size", "4"])
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert "step 4: loss" in capsys.readouterr().out


def test_example_webdataset_pipeline_batches_one_bucket_each(image_folder, tmp_path):
    from microcond.data.loader import open_source
    from microcond.data.shards import write_shards

    shards = write_shards(open_source(image_folder, cache_dir=tmp_path / "cache"), tmp_path / "shards", max_count=10, progress=False)
    spec = f"{shards[0].parent}/shard-{{000000..{len(shards) - 1:06d}}}.tar"
    batches = load_example("webdataset_pipeline").main([spec, "--buckets", "16x24,24x16,16x16", "--batch-size", "2", "--batches", "3"])
    assert len(batches) == 3
    for batch in batches:
        h, w = batch["pixels"].shape[2:]
        assert batch["pixels"].shape[:2] == (2, 3) and all(ids[4:].tolist() == [h, w] for ids in batch["time_ids"])


def test_example_datasets_pipeline_crops_rows_on_access(image_folder, capsys):
    dataset = load_example("datasets_pipeline").main([str(image_folder), "--resolution", "16"])
    row = dataset[5]
    assert tuple(row["pixels"].shape) == (3, 16, 16) and row["time_ids"].tolist()[4:] == [16, 16]
    assert torch.equal(dataset[5]["pixels"], row["pixels"])  # keyed by the row: the same crop whenever it is read
    assert capsys.readouterr().out.count("time ids") == 3
    assert "datasets" in sys.modules
