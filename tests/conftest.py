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


class RecordingNet:
    """A stand-in denoiser for loss tests: the real dropout draws (embedder, labels, captions) of a
    config, and a record of what the loss hands it; returns ``output(x)`` (zeros by default)."""

    def __init__(self, cfg, output=None):
        from microcond.cond.embedder import MicroCondEmbedder
        from microcond.model import Denoiser

        self.embedder = MicroCondEmbedder(signals=cfg.signals, dropout=cfg.cond_dropout)
        self.class_dropout, self.caption_dropout = cfg.class_dropout, cfg.caption_dropout
        self.sample_label_drop = Denoiser.sample_label_drop.__get__(self)
        self.sample_caption_keep = Denoiser.sample_caption_keep.__get__(self)
        self.output = output or (lambda x: x.new_zeros(x.shape))
        self.seen: list[dict] = []

    def __call__(self, x, t, ids, drop, labels, context=None, pooled=None):
        self.seen.append({"x": x, "t": t, "ids": ids, "drop": drop, "labels": labels, "context": context, "pooled": pooled})
        return self.output(x)
