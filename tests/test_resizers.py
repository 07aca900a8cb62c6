"""The resizers the effective-size estimator knows, against the libraries themselves: each grid of
:data:`microcond.data.resampling.RESIZERS` equals that library's upscale of an impulse, and an
upscale of a synthetic texture by each library is measured at its factor.

Oracles: Pillow, OpenCV (``cv2.resize``), libvips (``pyvips``' ``resize``) and ImageMagick
(``convert -resize``), each installed by the set-up.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from microcond.data.effective import estimate
from microcond.data.resampling import NAMES, RESIZERS, SUPPORT, grids
from test_effective import encoded, texture

cv2 = pytest.importorskip("cv2", reason="OpenCV is in the test extra (scripts/setup.sh)")
pyvips = pytest.importorskip("pyvips", reason="libvips is in the test extra (scripts/setup.sh)")


def _magick(a: np.ndarray, size: tuple[int, int], kernel: str) -> np.ndarray:
    """ImageMagick's ``-resize WxH!`` of a float (H, W) or uint8 (H, W, 3) array, through 16-bit PNG/PGM files."""
    flat = a.ndim == 2
    with tempfile.TemporaryDirectory() as tmp:
        source = np.clip(a * 16384 + 32768, 0, 65535).astype(np.uint16) if flat else a
        Image.fromarray(source).save(f"{tmp}/in.png")
        flags = [] if kernel == "default" else ["-filter", kernel]
        out = f"{tmp}/out.{'pgm' if flat else 'png'}"
        subprocess.run(["convert", f"{tmp}/in.png", *flags, "-resize", f"{size[0]}x{size[1]}!", *(["-depth", "16"] if flat else []), out],
                       check=True, capture_output=True)
        b = np.asarray(Image.open(out))
    return (b.astype(np.float64) - 32768) / 16384 if flat else b


def _vips(a: np.ndarray, size: tuple[int, int], kernel: str) -> np.ndarray:
    bands = 1 if a.ndim == 2 else a.shape[2]
    fmt = "float" if a.dtype == np.float32 else "uchar"
    image = pyvips.Image.new_from_memory(a.tobytes(), a.shape[1], a.shape[0], bands, fmt)
    out = image.resize(size[0] / a.shape[1], vscale=size[1] / a.shape[0], **({} if kernel == "default" else {"kernel": kernel}))
    return np.ndarray(buffer=out.write_to_memory(), dtype=a.dtype, shape=(out.height, out.width, bands)[: a.ndim])


def _opencv(a: np.ndarray, size: tuple[int, int], kernel: str) -> np.ndarray:
    flag = {"default": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "nearest-exact": cv2.INTER_NEAREST_EXACT, "cubic": cv2.INTER_CUBIC,
            "lanczos4": cv2.INTER_LANCZOS4, "area": cv2.INTER_AREA}[kernel]
    return cv2.resize(a, size, interpolation=flag)


def _pillow(a: np.ndarray, size: tuple[int, int], kernel: str) -> np.ndarray:
    image = Image.fromarray(a, mode="F" if a.dtype == np.float32 else None)
    return np.asarray(image.resize(size, {"default": Image.BICUBIC, "nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
                                          "lanczos": Image.LANCZOS}[kernel]))


LIBRARIES = {"pillow": _pillow, "opencv": _opencv, "vips": _vips, "magick": _magick}
# (library, its kernel flag) -> the resizer of RESIZERS that it is; "default": what the library does unasked.
CASES = {
    ("pillow", "default"): "bicubic", ("pillow", "nearest"): "nearest", ("pillow", "bilinear"): "bilinear", ("pillow", "lanczos"): "lanczos",
    ("opencv", "default"): "bilinear", ("opencv", "nearest"): "nearest-floor", ("opencv", "nearest-exact"): "nearest",
    ("opencv", "cubic"): "cubic-0.75", ("opencv", "lanczos4"): "lanczos4", ("opencv", "area"): "area",
    ("vips", "default"): "bicubic-vips", ("vips", "nearest"): "nearest-floor", ("vips", "linear"): "bilinear-vips", ("vips", "lanczos3"): "bicubic-vips",
    ("magick", "default"): "mitchell", ("magick", "Triangle"): "bilinear", ("magick", "Catrom"): "bicubic", ("magick", "Lanczos"): "lanczos",
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _magick_installed() -> None:
    try:
        subprocess.run(["convert", "-version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.fail("ImageMagick's convert is missing: scripts/setup.sh installs it (Debian package imagemagick)")


def _library_matrix(library: str, kernel: str, n0: int, length: int) -> np.ndarray:
    """The library's upscale of each impulse, along the width of a 4-row image: (length, n0)."""
    columns = []
    for j in range(n0):
        row = np.zeros((4, n0), np.float32)
        row[:, j] = 1.0
        columns.append(np.asarray(LIBRARIES[library](row, (length, 4), kernel), np.float64)[1])
    return np.stack(columns, axis=1)


def _grid_matrix(resizer: str, n0: int, length: int) -> np.ndarray:
    """:func:`grids` for the whole axis, its columns placed at the originals they stand for: (length, n0)."""
    (matrix,) = grids(length, np.array([n0]), resizer, np.array([0]), length).astype(np.float64)
    kernel, offset, _ = RESIZERS[resizer]
    # The first column is the original grids() starts from at output 0 (see its ``j``).
    if kernel == "nearest" and offset == 0.0:
        first = np.floor(0.5 * n0 / length)
    else:
        centre = (0.5 + offset) * n0 / length
        first = np.floor(centre) if kernel == "nearest" else centre
    j0 = int(np.floor(first - 0.5 - SUPPORT[kernel]))
    placed = np.zeros((length, n0))
    for column in range(matrix.shape[1]):
        if 0 <= j0 + column < n0:
            placed[:, j0 + column] = matrix[:, column]
    return placed


def test_every_resizer_has_a_library_case() -> None:
    assert set(CASES.values()) == set(NAMES)


@pytest.mark.parametrize("library, kernel", sorted(CASES))
@pytest.mark.parametrize("n0, length", [(20, 50), (24, 34), (26, 80)])
def test_grid_equals_the_library_upscale_of_an_impulse(library, kernel, n0, length) -> None:
    """Away from the borders (each library treats them its own way) the grid is the library's
    resampling matrix; ImageMagick's values carry 16-bit rounding."""
    resizer = CASES[library, kernel]
    border = int(np.ceil(length / n0 * (SUPPORT[RESIZERS[resizer][0]] + 1)))
    rows = np.arange(border, length - border)
    if (library, kernel) == ("vips", "nearest"):  # libvips takes the original before where x n0 / length is whole; OpenCV the one after
        rows = rows[(rows * n0) % length != 0]
    ours, theirs = _grid_matrix(resizer, n0, length)[rows], _library_matrix(library, kernel, n0, length)[rows]
    assert len(ours) >= length // 3
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-4 if library == "magick" else 1e-5)


def _library_upscale(library: str, kernel: str, factor: float, seed: int) -> bytes:
    """A texture area-downscaled by ``factor`` and upscaled back to 240 x 320 by the library, as PNG."""
    small = texture(240, 320, seed).resize((round(320 / factor), round(240 / factor)), Image.BOX)
    big = LIBRARIES[library](np.asarray(small), (320, 240), kernel)
    return encoded(Image.fromarray(np.asarray(big, np.uint8)), "PNG")


@pytest.mark.parametrize("library, kernel", sorted(CASES))
@pytest.mark.parametrize("factor", [1.6, 2.7])
def test_each_library_upscale_is_measured_at_its_factor(library, kernel, factor) -> None:
    e = estimate(_library_upscale(library, kernel, factor, seed=int(factor * 10)))
    truth = np.array([240 / round(240 / factor), 320 / round(320 / factor)])
    assert np.all(np.abs(np.log(np.array(e.scale) / truth)) <= 0.095), (CASES[library, kernel], e)


def test_library_upscale_helpers_return_the_size_asked() -> None:
    for library, kernel in CASES:
        out = LIBRARIES[library](np.zeros((10, 12, 3), np.uint8), (30, 25), kernel)
        assert out.shape[:2] == (25, 30), (library, kernel)
