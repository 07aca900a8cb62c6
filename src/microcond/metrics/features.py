"""The feature space of the in-domain fidelity metrics: a small classifier of the real images.

Inception (FID's network) is trained on ImageNet photos at 299 px and is not available
offline; a few conv layers trained on the reference images themselves give features that see
what matters in this data (class identity, shape, texture). The network is trained once per
reference set with a fixed seed and a fixed number of steps, and cached as safetensors under a
key that hashes the pixels, the labels and the recipe, so every evaluation of a run against the
same references uses the same features.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from microcond.data.pixels import to_uint8


@dataclass(frozen=True)
class FeatureRecipe:
    """How the feature network is built and trained (part of the cache key)."""

    width: int = 32
    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    version: int = 1


class FeatureNet(nn.Module):
    """Four 3x3 conv stages (stride 2 after the first), global average pooling, a linear head.

    ``features`` is the pooled penultimate layer: (B, 2 * width).
    """

    def __init__(self, n_classes: int, width: int = 32) -> None:
        super().__init__()
        chans = [3, width // 2, width, 2 * width, 2 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(8, chans[i + 1]), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(2 * width, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))  # (B, 2 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, n_classes)


def cache_key(images: torch.Tensor, labels: torch.Tensor, recipe: FeatureRecipe) -> str:
    """Hex digest of the reference pixels (as uint8), labels and recipe."""
    digest = hashlib.sha256()
    digest.update(to_uint8(images).numpy().tobytes())
    digest.update(labels.to(torch.int64).numpy().tobytes())
    digest.update(json.dumps([list(images.shape), asdict(recipe)], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def train_feature_net(
    images: torch.Tensor, labels: torch.Tensor, recipe: FeatureRecipe = FeatureRecipe(), progress: bool = True
) -> FeatureNet:
    """Train the classifier on (N, 3, H, W) images in [-1, 1] with labels (N,) in 0..K-1."""
    n_classes = int(labels.max()) + 1
    with torch.random.fork_rng():  # fixed initialisation without touching the caller's RNG
        torch.manual_seed(recipe.seed)
        net = FeatureNet(n_classes, recipe.width)
    g = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)
    net.train()
    for _ in tqdm(range(recipe.steps), desc="feature classifier", disable=not progress, leave=False):
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=g)
        x = images[idx]  # (b, 3, H, W)
        flip = torch.rand(len(idx), generator=g) < 0.5  # mirror half: features should not care
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        loss = F.cross_entropy(net(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def feature_net(
    refs: torch.Tensor,
    labels: torch.Tensor,
    cache_dir: str | Path,
    recipe: FeatureRecipe = FeatureRecipe(),
    progress: bool = True,
) -> FeatureNet:
    """The classifier for these references: loaded from ``cache_dir`` or trained and saved there.

    The cache file holds only the weights (about 0.3 MB on disk and in memory at width 32).
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if labels.shape != (len(refs),):
        raise ValueError(f"need one class label per reference image: {len(refs)} images, labels {tuple(labels.shape)}")
    if labels.min() < 0 or len(labels.unique()) < 2:
        raise ValueError(f"the feature classifier needs labels >= 0 from at least 2 classes, got {labels.unique().tolist()}")
    path = Path(cache_dir) / f"feature_net-{cache_key(refs, labels, recipe)}.safetensors"
    n_classes = int(labels.max()) + 1
    if path.exists():
        net = FeatureNet(n_classes, recipe.width)
        net.load_state_dict(load_file(path))
        return net.eval()
    net = train_feature_net(refs, labels, recipe, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path, metadata={"recipe": json.dumps(asdict(recipe))})
    accuracy = (extract_logits(net, refs).argmax(1) == labels).float().mean().item()
    print(f"feature classifier: trained {recipe.steps} steps, train accuracy {accuracy:.3f}, "
          f"cached at {path} ({path.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return net


@torch.no_grad()
def extract_logits(net: FeatureNet, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([net(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def extract_features(net: FeatureNet, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """(N, D) float64 penultimate features, in batches (memory: one batch of activations)."""
    chunks = [net.features(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).double().numpy()
