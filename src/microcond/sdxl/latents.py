"""VAE latents: the latent space of a local AutoencoderKL, a memory-mapped latent cache, and the
loader's batches read from it."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from microcond.data.loader import BucketBatches
from microcond.data.pixelcache import cache_key
from microcond.data.ragged import MARKER, RaggedArrays
from microcond.data.pixels import to_model
from microcond.sdxl.folders import folder_identity, require_folder

LATENT_CACHE_VERSION = 2  # 2: the ragged-array layout of data.ragged


class LatentSpace:
    """A frozen diffusers ``AutoencoderKL``: uint8 pixels -> scaled latents -> images in [-1, 1]."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu") -> None:
        from diffusers import AutoencoderKL

        self.folder = require_folder(folder, "--vae", "an AutoencoderKL (config.json and weights)")
        self.vae = AutoencoderKL.from_pretrained(self.folder, local_files_only=True, use_safetensors=True).to(device).eval().requires_grad_(False)
        cfg = self.vae.config
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.channels = int(cfg.latent_channels)
        self.downscale = 2 ** (len(cfg.block_out_channels) - 1)  # 8 for SDXL's VAE

    def identity(self) -> str:
        return folder_identity(self.folder)

    def latent_shape(self, size: tuple[int, int]) -> tuple[int, int, int]:
        """(C, h, w) of the latents of an image of ``size`` (h, w)."""
        h, w = size
        if h % self.downscale or w % self.downscale:
            raise ValueError(f"bucket {h}x{w} is not a multiple of the VAE's downscale {self.downscale}; use buckets in multiples of 64 (--buckets sdxl)")
        return self.channels, h // self.downscale, w // self.downscale

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> (B, C, H/f, W/f) float32 scaled latents (posterior mean)."""
        x = to_model(pixels.to(self.vae.device))  # (B, 3, H, W) in [-1, 1]
        mean = self.vae.encode(x).latent_dist.mean  # (B, C, h, w)
        return (mean.float() - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, H, W) float32 images in [-1, 1]."""
        z = latents.to(self.vae.device, torch.float32) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.float().clamp(-1.0, 1.0)

    def decode_in_chunks(self, latents: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        """:meth:`decode` ``chunk`` latents at a time (the VAE's activations at 1024 px are large),
        gathered on the CPU: (B, 3, H, W)."""
        return torch.cat([self.decode(latents[k:k + chunk]).cpu() for k in range(0, len(latents), chunk)])


class LatentCache(RaggedArrays):
    """Each image's latents for ``crops`` crops, with the ids of each crop, memory-mapped float16.

    Crop ``k`` of image ``i`` is the crop the loader makes for it in epoch ``k`` (same seed,
    crop mode, flip), so a run with the cache trains on exactly the crops (up to float16
    rounding of the latents) that re-encoding would give in its first ``crops`` epochs; epoch
    ``e`` uses crop ``e mod crops``. A ragged array (:mod:`microcond.data.ragged`) in
    ``CACHE/latents-<key>/``: row ``i`` is (crops, C, h, w); ``ids.npy`` (N, crops, 6) int64 holds
    the MicroCond of each crop, crop offsets included.
    """

    def __init__(self, folder: str | Path) -> None:
        super().__init__(folder)
        self.crops, self.settings = int(self.meta["crops"]), self.meta["settings"]
        self.ids = self.array("ids")

    @staticmethod
    def key_for(dataset: BucketBatches, latent_space: LatentSpace, crops: int) -> tuple[str, dict]:
        """The cache key and the settings it covers: images, buckets, crop mode, flip, seed, VAE,
        and the original sizes the cached ids carry (``original_size_source``)."""
        settings = {"version": LATENT_CACHE_VERSION, "images": cache_key(dataset.source, dataset.buckets, dataset.background, dataset.fast),
                    "buckets": [list(b) for b in dataset.buckets], "crop_mode": dataset.crop_mode,
                    "flip_probability": dataset.flip_probability, "seed": dataset.seed, "crops": crops,
                    "vae": latent_space.identity(), "dtype": "float16", "latent": "posterior mean",
                    "original_sizes": dataset.source.told_digest()}  # the cached ids carry the told sizes
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24], settings

    @classmethod
    def build(cls, dataset: BucketBatches, latent_space: LatentSpace, crops: int, cache_dir: str | Path, *,
              batch: int = 8, progress: bool = True) -> "LatentCache":
        """Encode every image's crops once (or reuse the cache with the same key)."""
        if dataset.crop_mode == "center" and dataset.flip_probability == 0:
            crops = 1  # every epoch's crop is the same: one is enough
        key, settings = cls.key_for(dataset, latent_space, crops)
        folder = Path(cache_dir) / f"latents-{key}"
        if (folder / MARKER).is_file():
            return cls(folder)
        n = len(dataset.source)
        targets = [dataset.buckets[b] for b in dataset.bucket_of.tolist()]
        shapes = np.array([(crops, *latent_space.latent_shape(t)) for t in targets], dtype=np.int64).reshape(n, 4)
        with cls.create(cache_dir, folder.name, shapes, np.float16) as cache:
            ids = cache.arrays["ids"] = np.zeros((n, crops, 6), dtype=np.int64)
            rows = np.sort(np.concatenate(dataset.members)) if dataset.members else np.zeros(0, np.int64)
            jobs = [(int(i), k) for b in range(len(dataset.buckets)) for i in rows[dataset.bucket_of[rows] == b] for k in range(crops)]
            bar = tqdm(total=len(jobs), desc="latent cache", unit="crop", disable=not progress, file=sys.stderr)
            for start in range(0, len(jobs), batch):
                pixels, done = [], []
                for i, k in jobs[start:start + batch]:  # a chunk may straddle two buckets: encoded by shape below
                    try:
                        image, cond = dataset.sample(k, i, targets[i])  # (th, tw, 3) uint8, MicroCond
                    except (OSError, ValueError) as err:
                        cache.fail(i, dataset.source.names[i], str(err) or type(err).__name__)
                        continue
                    pixels.append(image)
                    done.append((i, k))
                    ids[i, k] = cond.ids
                for shape in {p.shape for p in pixels}:
                    same = [j for j, p in enumerate(pixels) if p.shape == shape]
                    stack = torch.from_numpy(np.stack([pixels[j] for j in same])).permute(0, 3, 1, 2)  # (b, 3, th, tw)
                    encoded = latent_space.encode(stack).cpu().numpy().astype(np.float16)  # (b, C, h, w)
                    for j, z in zip(same, encoded):
                        i, k = done[j]
                        cache.row(i)[k] = z
                bar.update(len(jobs[start:start + batch]))
            bar.close()
            cache.finish({"key": key, "crops": crops, "settings": settings, "images": n})
        return cls(folder)

    def get(self, i: int, crop: int) -> np.ndarray:
        """Latents of crop ``crop`` of row ``i``: (C, h, w) float16, a read-only view of the map."""
        return super().get(i)[crop]

    def sizes(self) -> dict[str, int]:
        """Bytes on disk; latents are memory-mapped (page cache shared by workers), ids and index in memory."""
        return {"disk_bytes": self.disk_bytes(), "latent_bytes": self.value_bytes(), "in_memory_bytes": int(self.ids.nbytes) + self.index_bytes()}


class LatentBatches(BucketBatches):
    """:class:`BucketBatches` whose batches come from a :class:`LatentCache`: ``{"latents", "ids", "labels", "index"}``."""

    def __init__(self, *args: Any, latent_cache: LatentCache, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latent_cache = latent_cache
        failed = np.array(latent_cache.failed_rows(), dtype=np.int64)
        self.members = [m[~np.isin(m, failed)] for m in self.members]
        self.starved = [(self.buckets[b], len(m)) for b, m in enumerate(self.members) if 0 < len(m) < self.global_batch]
        if all(len(m) < self.global_batch for m in self.members):
            raise ValueError(f"no bucket holds a full global batch of {self.global_batch} cached images; lower batch_size")

    def make_batch(self, epoch: int, bucket: int, rows: np.ndarray) -> dict[str, torch.Tensor]:
        mine = [int(i) for i in rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]]
        crop = epoch % self.latent_cache.crops
        latents = np.stack([self.latent_cache.get(i, crop) for i in mine]).astype(np.float32)  # (b, C, h, w)
        return {
            "latents": torch.from_numpy(latents),
            "ids": torch.from_numpy(self.latent_cache.ids[mine, crop].copy()),  # (b, 6) int64, the crop's MicroCond
            "labels": torch.from_numpy(self.source.labels[mine].copy()),  # (b,)
            "index": torch.tensor(mine, dtype=torch.int64),  # (b,)
        }
