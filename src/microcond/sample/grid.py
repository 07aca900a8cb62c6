"""Image grids and files from sample tensors: labelled PNG grids and one PNG per sample."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from microcond.base.files import atomic_path
from microcond.data.pixels import to_uint8

GRID_CELL_PX = 128  # tiny 32 px samples are upscaled to about this, so they can be seen
PAD = 2
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def to_hwc_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, grey images repeated to RGB."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got {tuple(images.shape)}")
    pixels = to_uint8(images)  # (N, C, H, W)
    pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
    return pixels.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _fitting_font(draw: ImageDraw.ImageDraw, labels: Sequence[str], width: int, size: int = 14):
    """The largest font (down to 8 px) in which every label fits ``width`` pixels."""
    while True:
        font = _font(size)
        widest = max((draw.textbbox((0, 0), s, font=font)[2] for s in labels), default=0)
        if widest <= width or size <= 8:
            return font
        size -= 1


def save_grid(
    images: torch.Tensor,
    path: str | Path,
    nrow: int,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    scale: int | None = None,
    title: str | None = None,
) -> Path:
    """Write (N, 3, H, W) images in [-1, 1] as a grid PNG, ``nrow`` images per row.

    Args:
        nrow: images per grid row (the number of columns).
        scale: nearest-neighbour upscaling factor; default: cells of about 128 px.
    """
    n, _, h, w = images.shape
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    rows = -(-n // nrow)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} grid rows")
    if col_labels is not None and len(col_labels) != min(nrow, n):
        raise ValueError(f"{len(col_labels)} column labels for {min(nrow, n)} grid columns")
    scale = scale or max(1, GRID_CELL_PX // max(h, w))
    ch, cw = h * scale, w * scale
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    col_font = _fitting_font(probe, col_labels or [], cw)
    row_font = _font(14)
    top = (probe.textbbox((0, 0), "Ag", font=col_font)[3] + 2 * PAD) if col_labels else 0
    top += (probe.textbbox((0, 0), title, font=row_font)[3] + 2 * PAD) if title else 0
    left = max((probe.textbbox((0, 0), s, font=row_font)[2] for s in row_labels), default=0) + 2 * PAD if row_labels else 0
    grid = Image.new("RGB", (left + nrow * (cw + PAD) + PAD, top + rows * (ch + PAD) + PAD), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((PAD, PAD), title, fill=TEXT, font=row_font)
    pixels = to_hwc_uint8(images)  # (N, H, W, 3)
    for i in range(n):
        r, c = divmod(i, nrow)
        cell = Image.fromarray(pixels[i]).resize((cw, ch), Image.Resampling.NEAREST)
        grid.paste(cell, (left + PAD + c * (cw + PAD), top + PAD + r * (ch + PAD)))
    for c, label in enumerate(col_labels or []):
        x0 = left + PAD + c * (cw + PAD)
        width = draw.textbbox((0, 0), label, font=col_font)[2]
        draw.text((x0 + (cw - width) // 2, top - PAD - draw.textbbox((0, 0), "Ag", font=col_font)[3]), label, fill=TEXT, font=col_font)
    for r, label in enumerate(row_labels or []):
        height = draw.textbbox((0, 0), label, font=row_font)[3]
        draw.text((PAD, top + PAD + r * (ch + PAD) + (ch - height) // 2), label, fill=TEXT, font=row_font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        grid.save(tmp)
    return path


def save_images(images: torch.Tensor, out_dir: str | Path, names: Sequence[str]) -> list[Path]:
    """Write each (3, H, W) image in [-1, 1] at its own resolution as ``out_dir/<name>.png``."""
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pixels in zip(names, to_hwc_uint8(images)):
        paths.append(out_dir / f"{name}.png")
        with atomic_path(paths[-1]) as tmp:
            Image.fromarray(pixels).save(tmp)
    return paths
