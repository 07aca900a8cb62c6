"""Where an image's object is, without knowing its colours: the object is where the detail is.

:func:`microcond.metrics.evaluate.cut_off` finds the demo's objects by colour against a known flat
background. Samples of a general checkpoint have any background, so this module finds the
object from edges and texture instead: in an object-centred picture the object carries the
detail, and a plain or defocused background carries little, whatever the colours.

- Detail map: the mean absolute Laplacian of luma in a grid of cells (32 x 32 whatever the
  resolution, so the same object gives the same map at 64 px and at 1024 px).
- Object: the largest 8-connected group of cells more detailed than 4x the lower quartile of
  the border cells (the background's level, estimated as :func:`microcond.metrics.evaluate.object_masks`
  estimates its noise) and than 1/20 of the most detailed cell (a floor for flat backgrounds).
- Cut off: the object reaches a border cell; the sides it reaches are reported too.
- Centre: the detail-weighted centre of the object's cells, in pixels.

A background in full focus and texture (a field of grass) raises the background level and hides
the object from the map; text and logos count as detail like anything else.

Images are float tensors (N, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from microcond.metrics.evaluate import laplacian, largest_component

DETAIL_GRID = 32  # cells per side of the detail map
MIN_OBJECT_AREA = 0.01  # share of the cells below which an image has no object (as evaluate.cut_off)
SIDES = ("top", "left", "bottom", "right")


def detail_map(images: torch.Tensor, grid: int = DETAIL_GRID) -> torch.Tensor:
    """(N, grid, grid) mean absolute Laplacian of luma per cell: where each image's edges and texture are."""
    if min(images.shape[2:]) < grid:
        raise ValueError(f"the detail map needs images of at least {grid} px a side, got {tuple(images.shape[2:])}")
    lap = laplacian(images).abs()[:, None]  # (N, 1, H-2, W-2)
    lap = F.pad(lap, (1, 1, 1, 1), mode="replicate")  # (N, 1, H, W): the 1 px frame repeats its neighbours
    return F.adaptive_avg_pool2d(lap, grid)[:, 0]


def detail_objects(detail: torch.Tensor) -> np.ndarray:
    """(N, g, g) bool: each map's object, the largest 8-connected group of cells above the threshold
    (4x the border cells' lower quartile, which ignores an object on up to 3/4 of the border, and
    at least 1/20 of the map's most detailed cell)."""
    d = detail.numpy()
    ring = np.concatenate([d[:, 0], d[:, -1], d[:, 1:-1, 0], d[:, 1:-1, -1]], axis=1)  # (N, 4g - 4)
    threshold = np.maximum(4 * np.quantile(ring, 0.25, axis=1), d.max(axis=(1, 2)) / 20)  # (N,)
    return largest_component(d > threshold[:, None, None])


def object_measures(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image, each (N,): ``centre_y``, ``centre_x`` of the object in px (NaN without an object),
    ``cut_off``, and whether it touches each side (``touches_top``, ``_left``, ``_bottom``, ``_right``)."""
    detail = detail_map(images)  # (N, g, g)
    obj = detail_objects(detail)
    g = obj.shape[1]
    obj &= (obj.sum(axis=(1, 2)) >= max(1, MIN_OBJECT_AREA * g * g))[:, None, None]
    weight = detail.numpy() * obj  # (N, g, g)
    total = weight.sum(axis=(1, 2))  # (N,)
    ys, xs = (np.arange(g) + 0.5) * images.shape[2] / g, (np.arange(g) + 0.5) * images.shape[3] / g  # cell centres, px
    with np.errstate(invalid="ignore", divide="ignore"):
        centre_y = (weight.sum(axis=2) * ys).sum(axis=1) / total
        centre_x = (weight.sum(axis=1) * xs).sum(axis=1) / total
    edges = {"top": obj[:, 0], "left": obj[:, :, 0], "bottom": obj[:, -1], "right": obj[:, :, -1]}  # each (N, g)
    touches = {f"touches_{side}": edges[side].any(axis=1) for side in SIDES}
    return {"centre_y": centre_y, "centre_x": centre_x, "cut_off": np.any(list(touches.values()), axis=0), **touches}
