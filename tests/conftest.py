"""Fixtures shared by several test modules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """24 small images of mixed sizes, formats and aspect ratios, with labels."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(24):
        h, w = int(rng.integers(10, 60)), int(rng.integers(10, 60))
        yy, xx = np.mgrid[:h, :w]
        pixels = np.stack([(xx * 7 + i * 20) % 256, (yy * 5) % 256, np.full((h, w), (i * 37) % 256)], -1).astype(np.uint8)
        name = f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(pixels).save(folder / name)
        lines.append(json.dumps({"file": name, "label": i % 2}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder
