"""Each metric separates a clearly better from a clearly worse synthetic case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from microcond.metrics.evaluate import (
    IN_DOMAIN,
    cut_off,
    cutoff_rate,
    evaluate,
    format_report,
    frechet_distance,
    high_frequency_energy,
    kernel_inception_distance,
    laplacian_variance,
    largest_component,
    load_references,
    sharpness,
    sliced_wasserstein,
)
from microcond.metrics.features import FeatureRecipe, cache_key, extract_features, feature_net

PALETTE = [(235, 235, 235), (40, 40, 60)]  # light and dark backgrounds
OBJECT_COLOURS = [(200, 50, 50), (50, 160, 60), (60, 80, 210)]
SIZE = 32
FAST = FeatureRecipe(width=32, steps=60, batch_size=32)


def scenes(n: int, seed: int, shift: float = 0.0, noise: float = 0.02, colour_shift: float = 0.0):
    """Discs (class 0) and squares (class 1) of palette-free colours on palette backgrounds.

    ``shift`` moves each object by that fraction of the image in a random direction, so 0.5
    puts its centre on the border. Returns (N, 3, SIZE, SIZE) in [-1, 1] and labels (N,).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    images, labels = [], []
    for _ in range(n):
        label = int(rng.integers(2))
        bg = np.array(PALETTE[rng.integers(len(PALETTE))], dtype=np.float64)
        fg = np.array(OBJECT_COLOURS[rng.integers(len(OBJECT_COLOURS))], dtype=np.float64)
        radius = rng.uniform(0.18, 0.28) * SIZE
        angle = rng.uniform(0, 2 * np.pi)
        cy, cx = SIZE / 2 + shift * SIZE * np.sin(angle), SIZE / 2 + shift * SIZE * np.cos(angle)
        cy, cx = cy + rng.uniform(-1.5, 1.5), cx + rng.uniform(-1.5, 1.5)
        if label == 0:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        else:
            inside = (np.abs(yy - cy) <= radius * 0.9) & (np.abs(xx - cx) <= radius * 0.9)
        img = np.where(inside[..., None], fg, bg) / 255.0  # (H, W, 3)
        img = img + colour_shift + rng.normal(0, noise, img.shape)
        images.append(np.clip(img, 0, 1) * 2 - 1)
        labels.append(label)
    return torch.tensor(np.stack(images), dtype=torch.float32).permute(0, 3, 1, 2), torch.tensor(labels)


def blur(images: torch.Tensor, passes: int = 2) -> torch.Tensor:
    kernel = torch.full((3, 1, 3, 3), 1 / 9)
    for _ in range(passes):
        images = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    return images


def test_sharpness_separates_sharp_from_blurred() -> None:
    refs, _ = scenes(32, seed=0)
    sharp, _ = scenes(32, seed=1)
    blurred = blur(sharp)
    assert laplacian_variance(blurred).mean() < 0.5 * laplacian_variance(sharp).mean()
    assert high_frequency_energy(blurred).mean() < 0.5 * high_frequency_energy(sharp).mean()
    good, bad = sharpness(sharp, refs), sharpness(blurred, refs)
    for name in ("laplacian_variance", "high_frequency_energy"):
        assert good[name]["ratio"] == pytest.approx(1.0, abs=0.3)
        assert bad[name]["ratio"] < 0.5
    with pytest.raises(ValueError, match="same resolution"):
        sharpness(sharp[:, :, :16, :16], refs)


def test_largest_component_follows_long_paths_and_keeps_the_biggest() -> None:
    mask = np.zeros((2, 9, 9), dtype=bool)
    mask[0, 1:8, 1] = mask[0, 7, 1:8] = mask[0, 1:8, 7] = True  # a U of 19 px: labels travel far
    mask[0, 3:5, 3:5] = True  # a separate 4 px blob
    mask[1, 0, 0] = True  # image 1: a single pixel
    out = largest_component(mask)
    assert out[0].sum() == 19 and not out[0, 3:5, 3:5].any()
    assert out[1].sum() == 1
    diag = np.zeros((1, 4, 4), dtype=bool)
    diag[0, [0, 1, 2, 3], [0, 1, 2, 3]] = True  # 8-connected diagonal line is one object
    assert largest_component(diag).sum() == 4


def test_cut_off_rate_separates_centred_from_cut_objects() -> None:
    centred, _ = scenes(40, seed=2)
    cut, _ = scenes(40, seed=3, shift=0.45)
    assert cut_off(centred, PALETTE).mean() == 0.0
    assert cut_off(cut, PALETTE).mean() >= 0.95
    # Background noise alone (no object) is not an object, with or without the palette.
    noise_only = (torch.tensor(PALETTE[0]) / 127.5 - 1).view(1, 3, 1, 1) + 0.04 * torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert not cut_off(noise_only.clamp(-1, 1)).any() and not cut_off(noise_only.clamp(-1, 1), PALETTE).any()
    # Blur (a poor sample) does not turn a centred object into a cut one.
    assert cut_off(blur(centred), PALETTE).mean() == 0.0
    rates = cutoff_rate(cut, centred, PALETTE)
    assert rates["samples"] >= 0.95 and rates["refs"] == 0.0


def test_frechet_distance_and_kid_on_known_gaussians() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4000, 8)), rng.normal(size=(4000, 8))
    far = rng.normal(loc=1.0, scale=2.0, size=(4000, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) < 0.05
    # N(0, I) vs N(1, 4I) in 8 dims: |mu|^2 + tr(I + 4I - 2 * 2I) = 8 + 8.
    assert frechet_distance(a, far) == pytest.approx(16.0, rel=0.05)
    same, _ = kernel_inception_distance(a, b, subsets=10, subset_size=500)
    shifted, _ = kernel_inception_distance(a, far, subsets=10, subset_size=500)
    assert abs(same) < 0.05 and shifted > 1.0


@pytest.fixture(scope="module")
def reference_set(tmp_path_factory):
    """Real-like references sorted by class (the order a class-folder layout reads back) and
    the feature classifier trained on them, cached in a shared folder."""
    refs, labels = scenes(256, seed=4)
    order = torch.argsort(labels, stable=True)
    refs, labels = refs[order], labels[order]
    cache = tmp_path_factory.mktemp("feature_cache")
    return refs, labels, cache, feature_net(refs, labels, cache, FAST, progress=False)


def test_fidelity_metrics_separate_matching_from_shifted(reference_set) -> None:
    refs, labels, cache, net = reference_set
    matching, _ = scenes(128, seed=5)
    shifted, _ = scenes(128, seed=6, shift=0.3, colour_shift=0.15)
    cached = list(cache.glob("feature_net-*.safetensors"))
    assert len(cached) == 1 and cache_key(refs, labels, FAST) in cached[0].name
    again = feature_net(refs, labels, cache, FAST, progress=False)  # loaded, not retrained
    np.testing.assert_array_equal(extract_features(net, matching), extract_features(again, matching))

    f_ref, f_good, f_bad = (extract_features(net, x) for x in (refs, matching, shifted))
    assert frechet_distance(f_good, f_ref) < 0.5 * frechet_distance(f_bad, f_ref)
    kid_good, kid_bad = kernel_inception_distance(f_good, f_ref, 20, 100)[0], kernel_inception_distance(f_bad, f_ref, 20, 100)[0]
    assert kid_good < 0.5 * kid_bad
    swd_good, swd_bad = sliced_wasserstein(matching, refs, 16), sliced_wasserstein(shifted, refs, 16)
    assert set(swd_good) == {"level0_32px", "level1_16px", "mean"}
    assert swd_good["mean"] < 0.5 * swd_bad["mean"]
    assert sliced_wasserstein(blur(matching), refs, 16)["level0_32px"] > 2 * swd_good["level0_32px"]


def test_evaluate_report_and_image_folder(tmp_path, reference_set) -> None:
    refs, labels, cache, _ = reference_set
    for i, (image, label) in enumerate(zip(refs, labels)):
        folder = tmp_path / "refs" / ("disc", "square")[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(folder / f"{i:04d}.png")
    (tmp_path / "refs" / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    refs_read = load_references(tmp_path / "refs", (SIZE, SIZE), progress=False)
    loaded, loaded_labels = refs_read.images, refs_read.labels
    assert loaded.shape == (256, 3, SIZE, SIZE) and refs_read.classes == ["disc", "square"]
    assert loaded_labels == labels.tolist()
    assert sorted(p.rsplit("/", 1)[1] for p, _ in refs_read.skipped) == ["broken.png"]
    # The demo data's layout: metadata.jsonl with labels; larger images are centre-cropped.
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (96, 64), (10, 20, 30)).save(flat / "a.png")
    (flat / "metadata.jsonl").write_text('{"file": "a.png", "label": 3}\n{"file": "gone.png", "label": 1}\n')
    demo_layout = load_references(flat, (SIZE, SIZE), progress=False)
    assert demo_layout.images.shape == (1, 3, SIZE, SIZE) and demo_layout.labels == [3]
    assert len(demo_layout.skipped) == 1 and "gone.png" in demo_layout.skipped[0][0]
    with pytest.raises(ValueError, match="folder of reference images"):
        load_references(tmp_path / "missing", (SIZE, SIZE))

    samples, _ = scenes(32, seed=8)
    report = evaluate(samples, loaded, loaded_labels, cache_dir=cache, palette=PALETTE, recipe=FAST, progress=False)
    assert len(list(cache.glob("*.safetensors"))) == 1  # same pixels and labels: the cached classifier
    assert report["note"] == IN_DOMAIN and report["cutoff_rate"]["refs"] == 0.0
    assert set(report["fidelity"]) == {"frechet_distance", "kid", "kid_std", "swd_x1e3"}
    text = format_report(report)
    assert "not Inception FID" in text and "frechet_distance" in text
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        evaluate(samples * 3, loaded, loaded_labels, cache_dir=cache, recipe=FAST)


def test_class_accuracy_counts_the_asked_class_with_its_interval() -> None:
    """A classifier whose answer is known (red -> 0, blue -> 1): three of four images as asked."""
    from microcond.metrics.evaluate import class_accuracy
    from microcond.metrics.stats import wilson

    class ColourNet(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x[:, 0].mean(dim=(1, 2)), x[:, 2].mean(dim=(1, 2))], dim=1)  # (B, 2)

    red, blue = torch.full((3, 8, 8), -1.0), torch.full((3, 8, 8), -1.0)
    red[0], blue[2] = 1.0, 1.0
    images = torch.stack([red, red, blue, blue])
    result = class_accuracy(ColourNet(), images, [0, 1, 1, 1])  # the second is red, asked as 1
    assert result["rate"] == 0.75 and result["n"] == 4
    assert (result["low"], result["high"]) == wilson(3, 4)
    with pytest.raises(ValueError, match="one class label per image"):
        class_accuracy(ColourNet(), images, [0, 1])
