"""The upscaled-files experiment's data: fakes whose file size lies, and the index that tells the truth."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from microcond.data.pixels import stack_hwc
from microcond.data.source import ImageSource
from microcond.experiments.upscaled import fake_upscales, index_variants
from microcond.metrics.evaluate import laplacian_variance


def demo_like(folder, n=20):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for k in range(n):
        h, w = (24, 30) if k % 4 == 0 else (64, 80)  # a quarter too small to fake
        name = f"{k:03d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
        lines.append(json.dumps({"file": name, "label": k % 3, "original_size": [h, w]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_fakes_keep_their_file_size_lose_detail_and_the_true_index_tells_their_size(tmp_path):
    clean = demo_like(tmp_path / "clean")
    truth = fake_upscales(clean, tmp_path / "upscaled")
    assert len(truth) == round(0.3 * 15)  # 30% of the 15 images above the training size
    for file, (h, w) in truth.items():
        before, after = Image.open(clean / file), Image.open(tmp_path / "upscaled" / file)
        assert after.size == before.size and 64 / 4 - 1 <= h <= 64 / 2 + 1 and 80 / 4 - 1 <= w <= 80 / 2 + 1
        sharp = laplacian_variance(stack_hwc([np.asarray(before.convert("RGB")), np.asarray(after.convert("RGB"))]))
        assert sharp[1] < 0.5 * sharp[0]  # the detail of the small image
    untouched = next(f for f in (p.name for p in clean.glob("*.png")) if f not in truth)
    assert (tmp_path / "upscaled" / untouched).read_bytes() == (clean / untouched).read_bytes()
    folders = index_variants(tmp_path / "upscaled", tmp_path, truth, progress=False)
    told = ImageSource.from_folder(folders["true"], folders["true"] / "index.parquet", size_source="effective")
    file = ImageSource.from_folder(folders["file"], folders["file"] / "index.parquet")
    for i, name in enumerate(told.names):
        key = name.rsplit("/", 1)[1]
        assert told.told_size(i) == tuple(truth.get(key, told.original_sizes[i].tolist()))
        assert file.told_size(i) == tuple(file.original_sizes[i].tolist())
    measured = ImageSource.from_folder(folders["effective"], folders["effective"] / "index.parquet", size_source="effective")
    assert measured.effective_sizes is not None and len(measured) == len(told)
