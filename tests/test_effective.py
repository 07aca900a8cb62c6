"""Effective size: known upscales recovered on synthetic textures, natives left alone, JPEG quality
from the tables, large files measured on a decoded band, orientation, bad input in one line."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from microcond.data import codecs, effective, nearest
from microcond.data.effective import MAX_DECODED_PIXELS, estimate, jpeg_quality
from microcond.data.resampling import grids

FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def texture(height: int, width: int, seed: int = 0) -> Image.Image:
    """A natural-like RGB image: 1/f noise in each channel plus hard-edged discs."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    amplitude = 1 / np.maximum(np.hypot(fy, fx), 1 / max(height, width))
    channels = []
    for _ in range(3):
        x = np.fft.irfft2(amplitude * np.exp(2j * np.pi * rng.random(amplitude.shape)), (height, width))
        channels.append((x - x.mean()) / x.std())
    image = Image.fromarray(np.clip(np.stack(channels, -1) * 40 + 128, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(2, max(3, width // 3))), int(rng.integers(2, max(3, height // 3)))
        draw.ellipse([x0, y0, x0 + size[0], y0 + size[1]], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def upscaled(image: Image.Image, factor: float, kernel: str) -> Image.Image:
    """``image`` area-downscaled by ``factor``, then resized back with ``kernel``."""
    small = image.resize((round(image.width / factor), round(image.height / factor)), Image.BOX)
    return small.resize(image.size, FILTERS[kernel])


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("kernel", list(FILTERS))
@pytest.mark.parametrize("factor", [1.5, 2.0, 3.0])
def test_known_upscale_is_recovered_on_both_axes(factor, kernel, fmt):
    data = encoded(upscaled(texture(240, 320), factor, kernel), fmt, quality=90)
    e = estimate(data)
    assert np.all(np.abs(np.log(np.array(e.scale) / factor)) <= 0.095), e
    assert (e.height, e.width) == (round(240 / e.scale[0]), round(320 / e.scale[1]))
    assert e.file_size == (240, 320) and e.confidence >= 0.5


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_native_images_are_not_flagged(seed, fmt):
    e = estimate(encoded(texture(240, 320, seed), fmt, quality=90))
    assert max(e.scale) < 1.25 and (e.height, e.width) == (240, 320), e


@pytest.mark.parametrize("quality", [40, 50])
@pytest.mark.parametrize("seed", [0, 2, 3])
def test_coarse_jpeg_blocks_are_not_an_upscale(seed, quality):
    """At low quality the 8x8 blocks of smooth content fit grids that repeat with them (4/3 lays
    3 originals on 4 pixels: twice per block) better than those grids shifted: the gain they must
    reach grows with the quantization noise (all were called 4/3x with a fixed gain)."""
    image = texture(300, 360, seed=seed).filter(ImageFilter.GaussianBlur(1.0))
    assert max(estimate(encoded(image, "JPEG", quality=quality)).scale) < 1.25
    assert codecs.jpeg(quality).block_gain > codecs.jpeg(75).block_gain == codecs.jpeg(95).block_gain


@pytest.mark.parametrize("seed", range(4))
def test_lossy_webp_blocks_are_not_an_upscale(seed):
    """Smooth content as lossy WebP: its 4x4 blocks fit a 4/3x grid aligned with them (all four
    were called 4/3x upscales before the codec was read)."""
    e = estimate(encoded(texture(384, 512, seed).filter(ImageFilter.GaussianBlur(1.2)), "WEBP", quality=80))
    assert max(e.scale) < 1.25, e


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
@pytest.mark.parametrize("factor", [4 / 3, 1.6, 8 / 3])
def test_an_upscale_whose_period_is_the_codecs_blocks_is_measured(factor, fmt):
    """Its periodicity falls on the blocks' own frequencies, which are ignored: tried anyway."""
    e = estimate(encoded(upscaled(texture(384, 512), factor, "bicubic"), fmt, quality=90))
    assert np.all(np.abs(np.log(np.array(e.scale) / factor)) <= 0.095), e


def _webp_animation(lossless: bool) -> bytes:
    out = io.BytesIO()
    frames = [texture(64, 64, seed) for seed in range(2)]
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], lossless=lossless, quality=80)
    return out.getvalue()


@pytest.mark.parametrize("data, expected", [
    (lambda: encoded(texture(64, 64), "JPEG", quality=70), codecs.jpeg(70)),
    (lambda: encoded(texture(64, 64), "PNG"), codecs.LOSSLESS),
    (lambda: encoded(texture(64, 64), "WEBP", quality=80), codecs.WEBP_LOSSY),
    (lambda: encoded(texture(64, 64), "WEBP", lossless=True), codecs.LOSSLESS),
    (lambda: encoded(texture(64, 64), "WEBP", quality=80, icc_profile=b"\0" * 999), codecs.WEBP_LOSSY),  # VP8X, an odd chunk first
    (lambda: _webp_animation(lossless=False), codecs.WEBP_LOSSY),
    (lambda: _webp_animation(lossless=True), codecs.LOSSLESS),
])  # fmt: skip
def test_the_codec_is_read_from_the_header(data, expected):
    with Image.open(io.BytesIO(data())) as image:
        assert codecs.codec(image, jpeg_quality(image)) == expected


def test_the_factors_a_codecs_blocks_hide():
    assert codecs.jpeg(90).hidden == pytest.approx((4 / 3, 1.6, 2, 8 / 3, 4, 8))
    assert codecs.LOSSLESS.hidden == () and all(codecs.WEBP_LOSSY.aligned_with_blocks(s) for s in codecs.WEBP_LOSSY.hidden)


def test_an_upscale_on_one_axis_is_measured_on_that_axis():
    image = texture(240, 160).resize((320, 240), Image.BICUBIC)  # width x2, height x1
    e = estimate(encoded(image, "PNG"))
    assert e.scale[0] < 1.1 and abs(e.scale[1] - 2) < 0.1 and (e.height, e.width) == (240, 160)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_upscale_whose_lines_hold_nothing_across_one_axis_is_measured_on_both(fmt):
    """Horizontal bands (a horizon, ripples): the height shows the upscale, the width holds only a
    smooth gradient that any grid explains. That is no evidence against an upscale that kept the
    aspect ratio: both axes take the factor (the height alone was reported before)."""
    rng = np.random.default_rng(3)
    column = np.cumsum(rng.normal(0, 6, 160)) + 40 * (np.arange(160) % 37 < 12)  # edges and 1/f^2 texture down the columns
    gradient = 25 * np.sin(np.linspace(0, np.pi, 200))  # smooth across the rows
    small = Image.fromarray(np.clip(column[:, None] - column.mean() + 128 + gradient[None, :], 0, 255).astype(np.uint8)).convert("RGB")
    big = small.resize((300, 240), Image.BICUBIC)
    e = estimate(encoded(big, fmt, **({"quality": 92} if fmt == "JPEG" else {})))
    assert e.scale == pytest.approx((1.5, 1.5), rel=0.05), e


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_jpeg_quality_is_read_from_the_tables(quality):
    data = encoded(texture(64, 64), "JPEG", quality=quality)
    with Image.open(io.BytesIO(data)) as image:
        assert jpeg_quality(image) == quality
        assert image.tile  # header only: nothing decoded yet
    assert estimate(data).jpeg_quality == quality


def test_jpeg_quality_is_none_for_other_formats():
    for fmt in ("PNG", "WEBP"):
        with Image.open(io.BytesIO(encoded(texture(64, 64), fmt))) as image:
            assert jpeg_quality(image) is None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_large_image_is_measured_on_a_band_of_rows(fmt, monkeypatch):
    """6000 x 4000, upscaled 2x with Lanczos: decoded pixels stay within the budget (counted by the
    decoder calls themselves) and the factor is still found on both axes, the height's on a band of
    349 rows (grids laid over the whole height)."""
    image = texture(2000, 3000).resize((6000, 4000), Image.LANCZOS)
    data = encoded(image, fmt, quality=92) if fmt == "JPEG" else encoded(image, fmt, compress_level=1)
    decoded = []
    band = effective._decode_rows
    monkeypatch.setattr(effective, "_decode_rows", lambda im, rows: decoded.append(im.width * rows) or band(im, rows))
    e = estimate(data)
    assert decoded == [e.decoded_pixels] and e.decoded_pixels <= MAX_DECODED_PIXELS
    assert (e.height, e.width, e.scale) == (2000, 3000, (2.0, 2.0)), e


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "P"), ("PNG", "RGBA")])
def test_band_decoding_equals_the_top_rows_of_a_full_decode(fmt, mode):
    image = texture(300, 200).convert(mode)
    data = encoded(image, fmt)
    with Image.open(io.BytesIO(data)) as opened:
        if fmt == "JPEG":
            opened.draft("L", opened.size)
        band = effective._decode_rows(opened, 37)
    with Image.open(io.BytesIO(data)) as full:
        if fmt == "JPEG":
            full.draft("L", full.size)
        assert np.array_equal(np.asarray(band.convert("L")), np.asarray(full.convert("L"))[:37])


def _png_with_exif_after_data(image: Image.Image, orientation: int) -> bytes:
    """A PNG whose eXIf chunk follows the image data (Pillow writes it before)."""
    data = encoded(image, "PNG")
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    end = data.rindex(b"IEND") - 4
    return data[:end] + chunk + data[end:]


@pytest.mark.parametrize("where", ["jpeg", "png_before_data", "png_after_data"])
def test_orientation_swaps_sizes_and_factors_like_the_scan(where):
    image = texture(240, 160).resize((320, 240), Image.BICUBIC)  # stored: width x2
    exif = Image.Exif()
    exif[0x0112] = 6
    if where == "jpeg":
        data = encoded(image, "JPEG", quality=95, exif=exif)
    elif where == "png_before_data":
        data = encoded(image, "PNG", exif=exif)
    else:
        data = _png_with_exif_after_data(image, 6)
    e = estimate(data)
    assert e.file_size == (320, 240) and (e.height, e.width) == (160, 240) and e.scale[0] > 1.8, e


def test_small_and_flat_images_say_they_are_unsure():
    e = estimate(encoded(texture(20, 30), "PNG"))
    assert (e.height, e.width, e.scale, e.confidence) == (20, 30, (1.0, 1.0), 0.0)
    flat = estimate(encoded(Image.new("RGB", (300, 200), (90, 90, 90)), "PNG"))
    assert flat.scale == (1.0, 1.0) and flat.confidence < 0.2


def test_bad_input_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    data = encoded(texture(200, 300), "PNG")
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 3])
    for path, expected in ((tmp_path / "text.jpg", "not a recognised image"), (tmp_path / "cut.png", "truncated"),
                           (tmp_path / "missing.png", "no such file")):  # fmt: skip
        with pytest.raises(ValueError, match=expected) as err:
            estimate(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    big = encoded(texture(300, 200), "PNG")
    with pytest.raises(ValueError, match="truncated"):  # cut inside the decoded band of a large file
        estimate(big[: len(big) // 2], max_pixels=300 * 150)
    with pytest.raises(ValueError, match="max_pixels"):
        estimate(data, max_pixels=0)


def test_nearest_grid_rounds_like_pillow():
    """Pillow's nearest neighbour steps the source coordinate by repeated addition; the grid does
    the same, so an exact 2/3 scale is reproduced pixel for pixel."""
    line = np.random.default_rng(0).integers(0, 255, (1, 256)).astype(np.uint8)
    up = np.asarray(Image.fromarray(line).resize((384, 1), Image.NEAREST), np.float64)[0]
    (matrix,) = grids(384, np.array([256]), "nearest", np.array([0]), 384)  # columns: originals -2, -1, ...
    originals = np.zeros(matrix.shape[1])
    originals[2:258] = line[0]
    assert np.array_equal(matrix @ originals, up)


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_small_upscale_is_measured_whole(kernel, fmt):
    """Axes too short for windows (here 40 and 36 px, from 13 x 12) are fitted whole."""
    small = texture(12, 13, seed=3)
    e = estimate(encoded(small.resize((40, 36), FILTERS[kernel]), fmt, quality=92))
    assert (e.height, e.width) == (12, 13), e


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (72, 64)])
def test_flat_graphics_are_not_called_upscaled(size):
    """Hard-edged shapes on a flat background fit some grid on some axis by chance; the axes must
    agree and the fit must explain the pixels down to the noise."""
    rng = np.random.default_rng(sum(size))
    for _ in range(4):
        image = Image.new("RGB", size[::-1], tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        h, w = size
        draw.rectangle([w // 2 - 2, h // 5, w // 2 + 2, h - h // 5], fill=(20, 20, 20))  # a plus sign
        draw.rectangle([w // 5, h // 2 - 2, w - w // 5, h // 2 + 2], fill=(20, 20, 20))
        draw.ellipse([int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2)), w - 3, h - 3], outline=(250, 250, 0), width=2)
        e = estimate(encoded(image, "PNG"))
        assert max(e.scale) < 1.25, e


def test_kept_projections_change_no_estimate_and_stay_within_their_budget(monkeypatch):
    """Projections are kept across images (files of one size share their grids); an estimate is
    the same from an empty cache or a full one, and the cache holds no more than its budget."""
    from microcond.data import gridaxis
    from microcond.data.resampling import ProjectionCache, grids, projections

    files = [encoded(upscaled(texture(150, 170, seed=s), 2.3, "bicubic"), "PNG") for s in range(2)] + [encoded(texture(150, 170, seed=5), "PNG")]
    monkeypatch.setattr(gridaxis, "PROJECTIONS", ProjectionCache())
    first = [estimate(f) for f in files]
    misses = gridaxis.PROJECTIONS.misses
    assert [estimate(f) for f in files] == first and gridaxis.PROJECTIONS.misses == misses  # all kept: no grid built again
    assert gridaxis.PROJECTIONS.hits > misses > 0
    small = ProjectionCache(max_bytes=200_000)
    monkeypatch.setattr(gridaxis, "PROJECTIONS", small)
    assert [estimate(f) for f in files] == first
    assert 0 < small.nbytes <= small.max_bytes
    starts = np.array([8, 60])
    kept = small.get(170, [70, 74], "bicubic", starts, 48, 0.5)  # (originals, windows, w, w)
    fresh = projections(grids(170, np.array([70, 74]), "bicubic", starts, 48, 0.5)).reshape(kept.shape)
    assert np.array_equal(kept, fresh)
    eigen = np.linalg.eigvalsh(kept.astype(np.float64))  # a projection, softened only where columns are degenerate (ridge)
    assert np.allclose(kept, kept.transpose(0, 1, 3, 2), atol=1e-5) and eigen.min() > -1e-4 and eigen.max() < 1 + 1e-4


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("factor", [1.6, 2.7])
def test_an_upscale_cropped_afterwards_is_measured(factor, kernel):
    """A crop after the upscale moves its grid by a phase no file records; the phase is searched."""
    small = texture(110, 140, seed=4)
    big = small.resize((round(140 * factor), round(110 * factor)), FILTERS[kernel])
    e = estimate(encoded(big.crop((5, 3, big.width - 4, big.height - 6)), "PNG"))
    true = big.height / 110, big.width / 140
    assert np.all(np.abs(np.log(np.array(e.scale) / true)) <= 0.095), e


@pytest.mark.parametrize("factor", [1.63, 2.24, 3.0])
@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_a_cropped_nearest_neighbour_upscale_is_read_off_its_runs(factor, fmt):
    """Its runs of repeated pixels fit a finer grid at a free phase as well as the true one (2.24x
    was measured at 1.8x), but their spacing is the factor, whatever the phase."""
    small = texture(110, 140, seed=5)
    big = small.resize((round(140 * factor), round(110 * factor)), Image.NEAREST)
    e = estimate(encoded(big.crop((5, 3, big.width - 4, big.height - 6)), fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert e.scale == pytest.approx((big.height / 110, big.width / 140), rel=0.02) and e.confidence == 1.0, e


def test_repeated_pixels_off_one_grid_are_no_upscale():
    """Flat content rounds to repeated pixels here and there (runs of 1 and 2, as a 1.5x upscale's),
    but their starts wander off any one grid; a native has almost none."""
    runs = np.random.default_rng(0).choice([1, 2], 200)  # runs of 1 and 2 pixels in no order
    assert nearest.run_factor(np.broadcast_to(np.repeat(np.arange(200.0), runs), (64, runs.sum()))) is None
    assert nearest.run_factor(np.asarray(texture(120, 160, seed=2).convert("L"), np.float64)) is None
    grid = np.floor(np.arange(300) / 2.24 + 0.3)  # a nearest upscale's pattern, for contrast
    assert nearest.run_factor(np.broadcast_to(grid, (64, 300))) == pytest.approx(2.24, rel=0.01)


def test_an_area_upscale_is_not_read_as_nearest_neighbour():
    """An area upscale (each output pixel the mean of the originals under its footprint, as OpenCV's
    INTER_AREA) repeats pixels in runs with a blend between them: read as a nearest-neighbour upscale,
    it came out at half its factor (1.47 for 3.1). The blends are told apart; the grids measure it."""
    n0, n = 90, 279  # 3.1x
    weights = np.zeros((n, n0))
    for x in range(n):
        a, b = x * n0 / n, (x + 1) * n0 / n
        for j in range(int(a), min(int(np.ceil(b)), n0)):
            weights[x, j] = (min(b, j + 1) - max(a, j)) * n / n0
    small = np.asarray(texture(90, 120, seed=7).convert("L"), np.float64)
    lines = np.round(weights @ small).T  # (120 lines, 279): upscaled along the lines
    assert nearest.run_factor(lines) is None
    nearest_lines = np.round(small[np.floor(np.arange(n) * n0 / n).astype(int)]).T
    assert nearest.run_factor(nearest_lines) == pytest.approx(3.1, rel=0.01)


@pytest.mark.parametrize("resizer", ["nearest", "nearest-floor", "bilinear", "bicubic-vips", "lanczos", "area"])
def test_grids_at_many_phases_equal_each_phase_alone(resizer):
    """The phase search builds all phases at once, with fractional original counts (a crop)."""
    starts, shifts, n0 = np.array([8, 70]), np.array([0.0, 0.125, 0.5, 0.875]), 300 / 2.37
    together = grids(300, np.full(4, n0), resizer, starts, 48, shift=shifts, borders=False)
    for i, shift in enumerate(shifts):
        alone = grids(300, np.array([n0]), resizer, starts, 48, shift=float(shift), borders=False)
        part = together[2 * i : 2 * i + 2]
        width = alone.shape[2]
        assert np.array_equal(part[..., :width], alone) and not part[..., width:].any()


@pytest.mark.parametrize("factor", [1.7, 2.5])
def test_smooth_content_is_measured_by_its_periodicity(factor):
    """A smooth image upscaled: every grid fits it to the rounding noise, shifted or not, but the
    resampling's periodic trace stands far above any native's on both axes."""
    from PIL import ImageFilter

    small = texture(150, 180, seed=6).filter(ImageFilter.GaussianBlur(1.5))
    big = small.resize((round(180 * factor), round(150 * factor)), Image.BILINEAR)
    e = estimate(encoded(big, "PNG"))
    true = big.height / 150, big.width / 180
    assert np.all(np.abs(np.log(np.array(e.scale) / true)) <= 0.095), e
    assert 0 <= e.confidence < 0.9  # a weaker verdict than a grid that fits
    assert max(estimate(encoded(small, "PNG")).scale) == 1.0  # the smooth native itself


def test_the_work_budget_bounds_the_grids_and_keeps_the_verdict_reached():
    native = encoded(texture(240, 320, seed=1), "PNG")
    full = estimate(native)
    assert full.grids > 50  # the measure fits many grids on a photo-like native
    for budget in (1, 40, full.grids - 1):
        e = estimate(native, max_grids=budget)
        assert e.grids <= budget and max(e.scale) < 1.25, (budget, e)
        assert e.confidence == 0.0  # a native verdict not fully checked is a guess
    assert estimate(native, max_grids=full.grids) == full  # enough for every step: the same result
    up = encoded(upscaled(texture(240, 320), 2.0, "bicubic"), "PNG")
    found = estimate(up)  # both axes' own fits agree: nothing more is fitted
    assert np.all(np.abs(np.log(np.array(found.scale) / 2.0)) <= 0.095) and found.grids < full.grids
    assert estimate(up, max_grids=found.grids) == found
    short = estimate(up, max_grids=found.grids - 1)  # the second axis's fit would pass the budget
    assert short.grids < found.grids and (short.scale, short.confidence) == ((1.0, 1.0), 0.0)
    for bad in (0, -3, True, 2.5, "10"):
        with pytest.raises(ValueError, match="max_grids"):
            estimate(native, max_grids=bad)
