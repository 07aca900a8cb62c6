"""In-domain metrics of samples against real reference images at the same resolution.

- Sharpness (paper Fig. 3): Laplacian variance and the share of spectral energy above half the
  Nyquist frequency, each reported for samples, references and their ratio.
- Cut-off rate (paper Fig. 4): the share of images whose object (the largest connected region
  that differs from the border's background colour) touches the image border.
- Fidelity (paper Table 2): Frechet distance and KID in the penultimate features of a small
  classifier trained once on the references (:mod:`microcond.metrics.features`), and a multi-scale
  sliced Wasserstein distance on Laplacian pyramids (Karras et al. 2018, no learned features).
- Recognisability: the share of samples that classifier puts in the class they were asked for,
  beside its accuracy on real images it never saw (the Inception Score's question, answered by
  an in-domain classifier with known classes).
  These are IN-DOMAIN metrics; their values are not comparable with Inception FID.

Images are float tensors (N, 3, H, W) in [-1, 1], as :func:`microcond.sample.samplers.sample` returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from microcond.metrics.features import FeatureNet, FeatureRecipe, extract_features, extract_logits, feature_net
from microcond.metrics.references import IMAGE_SUFFIXES, References, load_references  # noqa: F401 (part of this module's API)
from microcond.metrics.stats import rate

IN_DOMAIN = "in-domain metrics (features of a classifier trained on the references; not Inception FID)"
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def check_images(images: torch.Tensor, name: str) -> torch.Tensor:
    """Validate (N, 3, H, W) images in [-1, 1]; return them as float32."""
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ValueError(f"{name}: expected a non-empty (N, 3, H, W) tensor, got {tuple(images.shape)}")
    images = images.float()
    if images.min() < -1.001 or images.max() > 1.001:
        raise ValueError(f"{name}: expected pixel values in [-1, 1], found [{images.min():.3f}, {images.max():.3f}]")
    return images


def _same_resolution(samples: torch.Tensor, refs: torch.Tensor) -> None:
    if samples.shape[2:] != refs.shape[2:]:
        raise ValueError(
            f"samples are {samples.shape[2]}x{samples.shape[3]} but references are {refs.shape[2]}x{refs.shape[3]}; "
            "compare at the same resolution (sample at the references' size)"
        )


def _gray(images: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nchw,c->nhw", images, torch.tensor(LUMA))  # (N, H, W)


# ------------------------------------------------------------------------------------- sharpness


def laplacian(images: torch.Tensor) -> torch.Tensor:
    """(N, H-2, W-2) 3x3 Laplacian of each image's luma, where the kernel fits inside the image."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(_gray(check_images(images, "images"))[:, None], kernel)[:, 0]


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """(N,) variance of the 3x3 Laplacian of each image's luma (a standard focus measure)."""
    return laplacian(images).flatten(1).var(dim=1)


def high_frequency_energy(images: torch.Tensor, cutoff: float = 0.5) -> torch.Tensor:
    """(N,) share of each image's non-DC spectral energy above ``cutoff`` x Nyquist (luma)."""
    gray = _gray(check_images(images, "images"))  # (N, H, W)
    gray = gray - gray.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.fft2(gray).abs().square()  # (N, H, W)
    fy = torch.fft.fftfreq(gray.shape[1])[:, None]  # cycles per pixel, Nyquist = 0.5
    fx = torch.fft.fftfreq(gray.shape[2])[None, :]
    high = (fy.square() + fx.square()).sqrt() > cutoff * 0.5  # (H, W)
    return (power * high).sum(dim=(1, 2)) / power.sum(dim=(1, 2)).clamp_min(1e-12)


def sharpness(samples: torch.Tensor, refs: torch.Tensor) -> dict:
    """Both sharpness measures for samples and references; ratio < 1 means blurrier samples."""
    _same_resolution(samples, refs)
    report = {}
    for name, measure in (("laplacian_variance", laplacian_variance), ("high_frequency_energy", high_frequency_energy)):
        s, r = measure(samples).mean().item(), measure(refs).mean().item()
        report[name] = {"samples": s, "refs": r, "ratio": s / r if r > 0 else float("nan")}
    return report


# ------------------------------------------------------------------------------------- cut-off


def border_background(images: torch.Tensor, palette: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(N, 3) background colour in [0, 1]: the median of the 1 px border ring, snapped to the
    nearest ``palette`` colour (RGB 0..255) when the data's background colours are known."""
    rgb = (check_images(images, "images").numpy() + 1) / 2  # (N, 3, H, W)
    ring = np.concatenate([rgb[:, :, 0], rgb[:, :, -1], rgb[:, :, 1:-1, 0], rgb[:, :, 1:-1, -1]], axis=2)  # (N, 3, P)
    median = np.median(ring, axis=2)  # (N, 3)
    if palette is None:
        return median
    colours = np.asarray(palette, dtype=np.float64) / 255.0  # (K, 3)
    if colours.ndim != 2 or colours.shape[1] != 3:
        raise ValueError(f"palette must be a list of (r, g, b) colours, got shape {colours.shape}")
    nearest = np.linalg.norm(median[:, None] - colours[None], axis=2).argmin(axis=1)  # (N,)
    return colours[nearest]


def object_masks(images: torch.Tensor, background: np.ndarray, min_threshold: float = 0.15) -> np.ndarray:
    """(N, H, W) bool: pixels whose RGB distance (0..1 units) from the background exceeds a
    threshold of 4x the border's lower-quartile distance (noise level), at least ``min_threshold``.

    The lower quartile estimates the noise even when an object covers part of the border.
    """
    rgb = (check_images(images, "images").numpy() + 1) / 2  # (N, 3, H, W)
    dist = np.linalg.norm(rgb - background[:, :, None, None], axis=1)  # (N, H, W)
    ring = np.concatenate([dist[:, 0], dist[:, -1], dist[:, 1:-1, 0], dist[:, 1:-1, -1]], axis=1)  # (N, P)
    threshold = np.maximum(min_threshold, 4.0 * np.quantile(ring, 0.25, axis=1))  # (N,)
    return dist > threshold[:, None, None]


def largest_component(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: each mask's largest 8-connected component (empty where the mask is).

    Label propagation vectorised over the batch: every pixel takes the smallest label among
    its neighbours, then follows its label's own label (pointer jumping), until stable.
    """
    n, h, w = masks.shape
    big = n * h * w + 1
    labels = np.where(masks, np.arange(1, big).reshape(n, h, w), big)  # label = 1 + flat index
    flat_jump = np.append(np.arange(1, big), big)  # jump[label - 1] of a background pixel stays big
    while True:
        padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), constant_values=big)  # (N, H+2, W+2)
        neighbours = np.min([padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)
        flat_jump[:-1] = labels.reshape(-1)
        new = np.where(masks, flat_jump[neighbours - 1], big)  # the neighbour's label's label
        if np.array_equal(new, labels):
            break
        labels = new
    counts = np.bincount(labels[masks], minlength=big)[1:big].reshape(n, h * w)  # (N, H*W)
    best = counts.argmax(axis=1) + 1 + np.arange(n) * h * w  # (N,) label of the largest component
    return masks & (labels == best[:, None, None])


def cut_off(
    images: torch.Tensor,
    palette: Sequence[Sequence[int]] | None = None,
    min_area: float = 0.01,
    margin: int = 1,
) -> np.ndarray:
    """(N,) bool: the image's object touches the border (within ``margin`` px).

    The object is the largest region differing from the background (:func:`object_masks`);
    regions smaller than ``min_area`` x the image area count as no object (not cut off).
    """
    images = check_images(images, "images")
    obj = largest_component(object_masks(images, border_background(images, palette)))  # (N, H, W)
    big_enough = obj.sum(axis=(1, 2)) >= max(1, min_area * obj.shape[1] * obj.shape[2])
    edge = np.zeros(obj.shape[1:], dtype=bool)
    edge[:margin], edge[-margin:], edge[:, :margin], edge[:, -margin:] = True, True, True, True
    return big_enough & (obj & edge).any(axis=(1, 2))


def object_centres(images: torch.Tensor, palette: Sequence[Sequence[int]] | None = None, min_area: float = 0.01) -> np.ndarray:
    """(N, 2) centre (y, x) in pixels of each image's object (:func:`cut_off`'s region); NaN where
    the image has no object of at least ``min_area`` x its area."""
    images = check_images(images, "images")
    obj = largest_component(object_masks(images, border_background(images, palette)))  # (N, H, W)
    area = obj.sum(axis=(1, 2))  # (N,)
    ys, xs = np.arange(obj.shape[1]) + 0.5, np.arange(obj.shape[2]) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.stack([(obj.sum(axis=2) * ys).sum(axis=1) / area, (obj.sum(axis=1) * xs).sum(axis=1) / area], axis=1)  # (N, 2)
    centre[area < max(1, min_area * obj.shape[1] * obj.shape[2])] = np.nan
    return centre


def cutoff_rate(samples: torch.Tensor, refs: torch.Tensor, palette: Sequence[Sequence[int]] | None = None) -> dict:
    """Share of cut-off objects in the samples, beside the same share in the references."""
    return {"samples": float(cut_off(samples, palette).mean()), "refs": float(cut_off(refs, palette).mean())}


# ------------------------------------------------------------------------------------- fidelity


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance of Gaussians fitted to feature sets (N, D) and (M, D).

    tr sqrt(S_a S_b) = sum of sqrt(eigenvalues of S_a^1/2 S_b S_a^1/2), a symmetric PSD matrix,
    so only ``eigh`` is needed (no scipy, no complex parts from a general sqrtm).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Frechet distance needs two feature sets (N>=2, D), got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # (D, D)
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T  # S_a^1/2
    inner = root_a @ cov_b @ root_a
    tr_root = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    return float(np.square(mu_a - mu_b).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_root)


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (x.y / D + 1)^3, averaged
    over random subsets; returns (mean, std over subsets)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(len(a), len(b), subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    dim = a.shape[1]
    values = []
    # When both sets fit in one subset every draw is the same sets: one evaluation suffices.
    for _ in range(1 if m == len(a) == len(b) else subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / dim + 1) ** 3, (y @ y.T / dim + 1) ** 3, (x @ y.T / dim + 1) ** 3)
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def laplacian_pyramid(images: torch.Tensor, min_size: int = 16) -> list[torch.Tensor]:
    """Band-pass levels, finest first, down to ``min_size`` (the last level is the low-pass)."""
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    kernel = (taps[:, None] * taps[None, :]).expand(3, 1, 5, 5)  # binomial 5x5 per channel

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=3)

    levels, x = [], images
    while min(x.shape[2:]) >= 2 * min_size:
        down = blur(x)[:, :, ::2, ::2]  # (N, 3, H/2, W/2)
        up = torch.zeros_like(x)
        up[:, :, ::2, ::2] = down * 4  # zero insertion, gain 4 restored by the same filter
        levels.append(x - blur(up))
        x = down
    return levels + [x]


def _random_patches(pyramid_level: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """(N * k, 3, 49): k random 7x7 neighbourhoods of each image, gathered without unfolding all."""
    n, _, h, w = pyramid_level.shape
    top = torch.randint(0, h - 6, (n, k, 1, 1), generator=g)
    left = torch.randint(0, w - 6, (n, k, 1, 1), generator=g)
    offsets = torch.arange(7)
    rows, cols = top + offsets[:, None], left + offsets[None, :]  # (n, k, 7, 1), (n, k, 1, 7)
    patches = pyramid_level[torch.arange(n).view(n, 1, 1, 1), :, rows, cols]  # (n, k, 7, 7, 3)
    return patches.permute(0, 1, 4, 2, 3).reshape(n * k, 3, 49)


def sliced_wasserstein(
    samples: torch.Tensor,
    refs: torch.Tensor,
    patches_per_image: int = 32,
    projections: int = 128,
    seed: int = 0,
) -> dict:
    """Multi-scale sliced Wasserstein distance on 7x7 Laplacian-pyramid patches (ProGAN, Karras
    et al. 2018, sec. 5). Both sets are normalised with the references' per-channel statistics
    (ProGAN normalises each set by itself, which hides colour shifts); reported x 1e3 per level."""
    samples, refs = check_images(samples, "samples"), check_images(refs, "references")
    _same_resolution(samples, refs)
    g = torch.Generator().manual_seed(seed)
    report = {}
    for level, (ps, pr) in enumerate(zip(laplacian_pyramid(samples), laplacian_pyramid(refs))):
        desc = [_random_patches(pyr, patches_per_image, g) for pyr in (ps, pr)]  # (N * k, 3, 49) each
        n = min(len(desc[0]), len(desc[1]))
        desc = [d[torch.randperm(len(d), generator=g)[:n]] for d in desc]  # equal counts to compare sorted
        mean, std = desc[1].mean(dim=(0, 2), keepdim=True), desc[1].std(dim=(0, 2), keepdim=True).clamp_min(1e-8)
        a, b = [((d - mean) / std).reshape(n, -1) for d in desc]  # (n, 147)
        dirs = torch.randn(a.shape[1], projections, generator=g)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        proj_a, proj_b = (a @ dirs).sort(dim=0).values, (b @ dirs).sort(dim=0).values  # (n, P)
        report[f"level{level}_{pr.shape[2]}px"] = 1e3 * (proj_a - proj_b).abs().mean().item()
    report["mean"] = float(np.mean(list(report.values())))
    return report


def fidelity(samples: torch.Tensor, refs: torch.Tensor, net: FeatureNet) -> dict:
    """Frechet distance and KID in ``net``'s features, and the pyramid SWD (no learned features)."""
    _same_resolution(check_images(samples, "samples"), check_images(refs, "references"))
    fs, fr = extract_features(net, samples), extract_features(net, refs)
    kid_mean, kid_std = kernel_inception_distance(fs, fr)
    return {
        "frechet_distance": frechet_distance(fs, fr),
        "kid": kid_mean,
        "kid_std": kid_std,
        "swd_x1e3": sliced_wasserstein(samples, refs),
    }


def class_accuracy(net: FeatureNet, images: torch.Tensor, labels: Sequence[int] | torch.Tensor) -> dict:
    """Share of ``images`` that ``net`` classifies as ``labels`` (argmax), with its 95% Wilson interval."""
    images = check_images(images, "images")
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if labels.shape != (len(images),):
        raise ValueError(f"need one class label per image: {len(images)} images, labels {tuple(labels.shape)}")
    predicted = extract_logits(net, images).argmax(dim=1)  # (N,)
    return rate((predicted == labels).tolist())


def evaluate(
    samples: torch.Tensor,
    refs: torch.Tensor,
    ref_labels: Sequence[int] | torch.Tensor,
    *,
    cache_dir: str | Path,
    palette: Sequence[Sequence[int]] | None = None,
    recipe: FeatureRecipe = FeatureRecipe(),
    sample_labels: Sequence[int] | None = None,
    held_out: tuple[torch.Tensor, Sequence[int]] | None = None,
    progress: bool = True,
) -> dict:
    """Every metric of this module, labelled as in-domain; ready for :func:`format_report`.

    Args:
        sample_labels: the class each sample was asked for; adds ``class_accuracy``.
        held_out: real images and labels the classifier did not train on, for the accuracy
            that samples are compared with (``class_accuracy.ratio``).
    """
    samples, refs = check_images(samples, "samples"), check_images(refs, "references")
    _same_resolution(samples, refs)
    net = feature_net(refs, torch.as_tensor(ref_labels, dtype=torch.int64), cache_dir, recipe, progress)
    report = {
        "note": IN_DOMAIN,
        "n_samples": len(samples),
        "n_refs": len(refs),
        "resolution": list(samples.shape[2:]),
        "sharpness": sharpness(samples, refs),
        "cutoff_rate": cutoff_rate(samples, refs, palette),
        "fidelity": fidelity(samples, refs, net),
    }
    if sample_labels is not None:
        accuracy = {"samples": class_accuracy(net, samples, sample_labels)}
        if held_out is not None:
            accuracy["held_out_real"] = class_accuracy(net, *held_out)
            accuracy["ratio"] = accuracy["samples"]["rate"] / max(accuracy["held_out_real"]["rate"], 1e-12)
        report["class_accuracy"] = accuracy
    return report


def format_report(report: dict, indent: int = 0) -> str:
    """Nested metric dict as aligned ``name: value`` lines."""
    lines = []
    for key, value in report.items():
        if isinstance(value, dict):
            lines.append(" " * indent + f"{key}:")
            lines.append(format_report(value, indent + 2))
        else:
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(" " * indent + f"{key}: {text}")
    return "\n".join(lines)
