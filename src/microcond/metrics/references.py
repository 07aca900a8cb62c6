"""Real reference images for the metrics, read as samples are made (short side resized to cover
the target size, centre crop), with their class labels; unreadable files are skipped and listed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from microcond.data.pixels import stack_hwc

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class References:
    """Real images for the metrics: (N, 3, H, W) in [-1, 1], labels when known, skipped files."""

    images: torch.Tensor
    labels: list[int] | None
    classes: list[str]
    skipped: list[tuple[str, str]]


def _reference_files(root: Path) -> tuple[list[tuple[Path, int]], list[str] | None]:
    """(file, label) pairs and class names from ``metadata.jsonl`` (the demo data's layout, with
    ``classes.json`` beside or above it), else from class sub-folders, else a flat folder (-1)."""
    if (root / "metadata.jsonl").exists():
        from microcond.data.metadata import read_metadata

        names = next((p / "classes.json" for p in (root, root.parent) if (p / "classes.json").exists()), None)
        classes = json.loads(names.read_text()) if names else None
        return [(root / file, int(r.get("label", -1))) for file, r in read_metadata(root)], classes
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if folders:
        return [(f, i) for i, c in enumerate(folders) for f in sorted((root / c).iterdir()) if f.is_file()], folders
    return [(f, -1) for f in sorted(root.iterdir()) if f.is_file()], None


def load_references(path: str | Path, target_size: tuple[int, int], progress: bool = True, *, min_original_edge: int = 0,
                    limit: int | None = None) -> References:
    """Read real images as the samples are made: short side resized to cover ``target_size``,
    centre crop (:func:`microcond.data.crop.decode_crop`). Unreadable files are skipped and listed.

    Labels come from the demo data's ``metadata.jsonl`` or from one level of class sub-folders.
    ``min_original_edge`` keeps only originals whose short edge reaches it (not upscaled);
    ``limit`` stops after that many images, in file order.
    """
    from microcond.data.crop import decode_crop

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"expected a folder of reference images, got {str(root)!r} (--ref)")
    files, classes = _reference_files(root)
    files = [(f, label) for f, label in files if f.suffix.lower() in IMAGE_SUFFIXES]
    pixels, labels, skipped = [], [], []
    for file, label in tqdm(files, desc="references", unit="img", disable=not progress, leave=False):
        try:
            crop, micro = decode_crop(file, target_size, np.random.default_rng(0), mode="center")  # (h, w, 3) uint8
        except (ValueError, OSError) as err:
            skipped.append((str(file), str(err)))
            continue
        if min(micro.original_size) < min_original_edge:
            continue
        pixels.append(crop)
        labels.append(label)
        if limit is not None and len(pixels) >= limit:
            break
    if not pixels:
        raise ValueError(f"no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {str(root)!r}; {len(skipped)} skipped")
    images = stack_hwc(pixels)  # (N, 3, h, w)
    known = all(label >= 0 for label in labels)
    return References(images, labels if known else None, classes or [], skipped)
