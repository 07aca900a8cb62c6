"""Tests of microcond.data.crop: decode (fast path, EXIF, modes), Algorithm 1 crop and flip."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from microcond.cond.embedder import MicroCond, resized_size
from microcond.data.crop import crop, decode_crop, load_resized, open_image, oriented_size, to_rgb


def photo_like(height: int, width: int, seed: int = 0, blur: float = 0.0) -> np.ndarray:
    """uint8 (H, W, 3) with a natural image's 1/f amplitude spectrum: smooth shading plus
    texture at every scale, correlated colour channels (pure noise would be unlike a photo).

    ``blur`` is the sigma in pixels of a Gaussian optical blur (a camera's MTF); 0 keeps
    texture up to the pixel scale, the harder case for reduced-scale decoding.
    """
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freq = np.hypot(fy, fx)  # (H, W//2+1), cycles per pixel
    freq[0, 0] = 1.0
    amplitude = np.exp(-2 * (np.pi * blur * freq) ** 2) / freq
    amplitude[0, 0] = 0.0
    fields = []
    for _ in range(3):
        spectrum = amplitude * rng.standard_normal(amplitude.shape) * np.exp(2j * np.pi * rng.random(amplitude.shape))
        fields.append(np.fft.irfft2(spectrum, s=(height, width)))  # (H, W)
    luma = fields[0]
    rgb = np.stack([luma + 0.3 * fields[1], luma, luma + 0.3 * fields[2]], axis=-1)  # (H, W, 3)
    rgb = (rgb - rgb.mean()) / rgb.std()
    return np.clip(128 + 40 * rgb, 0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray, quality: int = 90, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def labelled(height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) whose every pixel names its own (row, col): crops can be checked exactly."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows % 256, cols % 256, (rows // 256) * 16 + cols // 256], axis=-1).astype(np.uint8)


# ------------------------------------------------------------------------------------ decode


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_jpeg_records_the_shape_it_returns(orientation):
    stored = photo_like(48, 80, seed=orientation)  # stored 48 high, 80 wide
    data = jpeg_bytes(stored, orientation=orientation)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    swap = orientation >= 5
    assert upright.shape[:2] == ((80, 48) if swap else (48, 80))

    image = open_image(data)
    assert (image.height, image.width) == upright.shape[:2] == oriented_size(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(np.asarray(image), upright)

    target = (32, 32)
    pixels, original = load_resized(data, target, fast=False)
    assert original == upright.shape[:2]
    assert pixels.shape == (*resized_size(original, target), 3)
    # Same pixels as orienting first, then resizing: only the rounding of Lanczos' two passes,
    # taken in the other order, differs (a wrong orientation scores below 20 dB).
    reference = np.asarray(Image.fromarray(upright).resize(pixels.shape[1::-1], Image.Resampling.LANCZOS))
    assert psnr(pixels, reference) >= 45.0

    out, cond = decode_crop(data, target, np.random.default_rng(0))
    assert cond.original_size == upright.shape[:2] and out.shape == (32, 32, 3)


@pytest.mark.parametrize("fmt, orientation", [("JPEG", 6), ("JPEG", 3), ("TIFF", 6), ("TIFF", 3), ("PNG", 8), ("WEBP", 5)])
def test_recorded_size_agrees_with_the_scan(tmp_path, fmt, orientation):
    """The scan's oriented (h, w), open_image, and load_resized's original size are one rule."""
    from microcond.data.scan import probe_image

    stored = photo_like(30, 52, seed=orientation)
    path = tmp_path / f"a.{fmt.lower()}"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, fmt, exif=exif)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    probe = probe_image(path)
    assert (probe.height, probe.width) == upright.shape[:2]
    assert np.asarray(open_image(path)).shape == upright.shape
    pixels, original = load_resized(path, (24, 24), fast=True)
    assert original == upright.shape[:2]
    assert pixels.shape == (*resized_size(original, (24, 24)), 3)
    reference = np.asarray(Image.fromarray(upright).resize(pixels.shape[1::-1], Image.Resampling.LANCZOS))
    assert psnr(pixels, reference) >= 40.0


@pytest.mark.parametrize("target", [16, 24, 48, 96])
def test_fast_path_matches_full_decode(target):
    """Draft (DCT scaling to >= 2x the output) + Lanczos vs full decode + Lanczos: >= 40 dB.

    Holds for photo-like content (1/f spectrum, JPEG quality 90): measured 44-57 dB for 512-2048
    px sources at 32-256 px targets (benchmarks/bench_crop.py). Content with much energy near
    the output's Nyquist frequency (white noise) measured down to about 40 dB.
    """
    data = jpeg_bytes(photo_like(384, 512, seed=target))
    fast, original = load_resized(data, (target, target), fast=True)
    full, original_full = load_resized(data, (target, target), fast=False)
    assert original == original_full == (384, 512)
    assert fast.shape == full.shape == (target, round(512 * target / 384), 3)
    # 384 / target >= 4 lets libjpeg scale by 1/2 or more, so this really is the reduced decode.
    assert not np.array_equal(fast, full)
    assert psnr(fast, full) >= 40.0


def test_original_size_from_metadata_wins():
    data = jpeg_bytes(photo_like(96, 128))  # pre-resized shard of a 3000x4000 original
    pixels, original = load_resized(data, (64, 64), original_size=(3000, 4000))
    assert original == (3000, 4000)
    assert pixels.shape == (*resized_size((3000, 4000), (64, 64)), 3)
    out, cond = decode_crop(data, (64, 64), np.random.default_rng(1), original_size=(3000, 4000))
    assert cond.original_size == (3000, 4000)
    cond.check_crop_inside()
    with pytest.raises(ValueError, match="aspect"):
        load_resized(data, (64, 64), original_size=(4000, 3000))  # width and height swapped


def test_modes_become_rgb_predictably():
    bg = (10, 20, 30)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, :, 3] = 0
    rgba[1, :, 3] = 255
    rgba[2, :, 3] = 128
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA"), bg)).astype(int)
    assert (out[0] == bg).all() and (out[1] == (200, 100, 50)).all()
    blend = (np.array([200, 100, 50]) * 128 + np.array(bg) * 127) / 255
    assert np.abs(out[2] - blend).max() <= 1

    la = Image.fromarray(np.dstack([np.full((2, 2), 90, np.uint8), np.array([[0, 255], [255, 0]], np.uint8)]), "LA")
    assert np.asarray(to_rgb(la, bg)).tolist() == [[list(bg), [90] * 3], [[90] * 3, list(bg)]]

    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 1
    reloaded = Image.open(io.BytesIO(png_bytes(palette)))
    assert reloaded.mode == "P"
    assert np.asarray(to_rgb(reloaded, bg)).tolist() == [[[255, 0, 0], list(bg)]]

    assert np.asarray(to_rgb(Image.new("CMYK", (1, 1), (0, 0, 0, 0)))).tolist() == [[[255, 255, 255]]]
    grey16 = Image.fromarray(np.array([[0, 32896, 65535]], np.uint16))
    assert grey16.mode.startswith("I;16")
    assert np.asarray(to_rgb(grey16))[0, :, 0].tolist() == [0, 128, 255]
    assert np.asarray(to_rgb(Image.fromarray(np.array([[-5, 65535, 10**6]], np.int32))))[0, :, 0].tolist() == [0, 255, 255]
    assert np.asarray(to_rgb(Image.fromarray(np.array([[-1.0, 127.6, 300.0]], np.float32))))[0, :, 0].tolist() == [0, 128, 255]
    assert np.asarray(to_rgb(Image.new("1", (1, 1), 1))).tolist() == [[[255, 255, 255]]]
    assert np.asarray(to_rgb(Image.new("L", (1, 1), 7))).tolist() == [[[7, 7, 7]]]


def test_png_with_alpha_through_the_full_path():
    rgba = Image.new("RGBA", (40, 30), (0, 0, 255, 0))
    pixels, original = load_resized(png_bytes(rgba), (16, 16), background=(0, 255, 0))
    assert original == (30, 40) and pixels.shape == (16, 21, 3)
    assert (pixels == (0, 255, 0)).all()


def test_tiny_and_extreme_images():
    one_pixel = png_bytes(Image.new("RGB", (1, 1), (9, 8, 7)))
    out, cond = decode_crop(one_pixel, (64, 48), np.random.default_rng(0))
    assert out.shape == (64, 48, 3) and (out == (9, 8, 7)).all()
    assert cond.original_size == (1, 1) and cond.target_size == (64, 48)
    assert cond.crop_top_left[0] == 0 and 0 <= cond.crop_top_left[1] <= 16  # 1x1 covers 64x48 as 64x64
    strip = png_bytes(Image.new("RGB", (3000, 1), (1, 2, 3)))
    out, cond = decode_crop(strip, (16, 16), np.random.default_rng(0))
    assert out.shape == (16, 16, 3) and cond.original_size == (1, 3000) and cond.crop_top_left[0] == 0
    with pytest.raises(ValueError, match="max_pixels"):
        load_resized(strip, (256, 256), max_pixels=10**6)  # a 256 x 768000 resize


def test_bad_files_raise_one_clear_valueerror(tmp_path):
    good = jpeg_bytes(photo_like(64, 64))
    cases = {
        b"not an image at all": "not a recognised image",
        good[: len(good) // 2]: "cannot decode",
        str(tmp_path / "missing.jpg"): "no such file",
    }
    for source, reason in cases.items():
        with pytest.raises(ValueError, match=reason):
            decode_crop(source, (32, 32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_pixels"):
        load_resized(good, (32, 32), max_pixels=1000)
    with pytest.raises(ValueError, match="background"):
        load_resized(good, (32, 32), background=(0, 0, 256))


def test_path_and_stream_sources(tmp_path):
    data = jpeg_bytes(photo_like(50, 70))
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    from_bytes, _ = load_resized(data, (20, 20))
    for source in (path, str(path), io.BytesIO(data)):
        pixels, original = load_resized(source, (20, 20))
        assert original == (50, 70)
        np.testing.assert_array_equal(pixels, from_bytes)


# -------------------------------------------------------------------------------------- crop

sizes = st.tuples(st.integers(1, 300), st.integers(1, 300))
targets = st.tuples(st.integers(1, 40), st.integers(1, 40))


@settings(max_examples=150, deadline=None)
@given(original=sizes, target=targets, seed=st.integers(0, 2**32 - 1), flip=st.booleans(), mode=st.sampled_from(["random", "center"]))
def test_recorded_crop_reproduces_the_pixels(original, target, seed, flip, mode):
    resized = labelled(*resized_size(original, target))  # (H, W, 3)
    height, width = resized.shape[:2]
    out, cond = crop(resized, original, target, np.random.default_rng(seed), mode=mode, flip=flip)
    assert isinstance(cond, MicroCond)
    assert cond.original_size == original and cond.target_size == target
    cond.check_crop_inside()
    assert out.shape == (*target, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    top, left = cond.crop_top_left
    # Offsets only along the axis with slack (paper Algorithm 1: the long axis).
    assert top == 0 or left == 0
    assert top <= height - target[0] and left <= width - target[1]
    if height > target[0]:
        assert left == 0
    if width > target[1]:
        assert top == 0
    if mode == "center":
        assert (top, left) == ((height - target[0]) // 2, (width - target[1]) // 2)
    # The record reproduces the output exactly from the resized image (flipped when flipped) ...
    frame = resized[:, ::-1] if flip else resized
    np.testing.assert_array_equal(out, frame[top : top + target[0], left : left + target[1]])
    # ... and a flipped sample is the mirror of the unflipped crop at left' = W - left - tw.
    if flip:
        mirrored = width - left - target[1]
        np.testing.assert_array_equal(out, resized[top : top + target[0], mirrored : mirrored + target[1]][:, ::-1])


def test_random_offsets_cover_the_slack_uniformly():
    resized = labelled(*resized_size((100, 130), (10, 10)))  # (10, 13): slack 3 along the width
    rng = np.random.default_rng(0)
    lefts = [crop(resized, (100, 130), (10, 10), rng)[1].crop_top_left[1] for _ in range(400)]
    counts = np.bincount(lefts, minlength=4)
    assert len(counts) == 4 and counts.min() >= 60  # each of 4 offsets ~100 times


def test_decode_crop_is_deterministic_and_flips_by_probability():
    data = jpeg_bytes(photo_like(60, 90))
    a = decode_crop(data, (24, 24), np.random.default_rng(7), flip_probability=0.5)
    b = decode_crop(data, (24, 24), np.random.default_rng(7), flip_probability=0.5)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    resized, original = load_resized(data, (24, 24))
    kept, cond = decode_crop(data, (24, 24), np.random.default_rng(3), mode="center", flip_probability=0.0)
    flipped, cond_f = decode_crop(data, (24, 24), np.random.default_rng(3), mode="center", flip_probability=1.0)
    np.testing.assert_array_equal(kept, resized[:, cond.crop_top_left[1] : cond.crop_top_left[1] + 24])
    left = cond_f.crop_top_left[1]
    np.testing.assert_array_equal(flipped, resized[:, ::-1][:, left : left + 24])


def test_crop_rejects_bad_input():
    resized = labelled(10, 13)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="mode"):
        crop(resized, (100, 130), (10, 10), rng, mode="middle")
    with pytest.raises(ValueError, match="resize"):
        crop(resized, (100, 100), (10, 10), rng)
    with pytest.raises(ValueError, match="uint8"):
        crop(resized.astype(np.float32), (100, 130), (10, 10), rng)
    with pytest.raises(ValueError, match="flip_probability"):
        decode_crop(b"", (10, 10), rng, flip_probability=2.0)
