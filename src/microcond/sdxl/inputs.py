"""The SDXL stage of training: latents and text for each batch, from the encoders or their caches."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from microcond.base.ranks import rank_zero_first
from microcond.data.loader import ResumableLoader, make_loader
from microcond.data.source import default_cache_dir
from microcond.sdxl.latents import LatentBatches, LatentCache, LatentSpace
from microcond.sdxl.text import TextCache, TextEncoders, read_captions
from microcond.train.batch import Batch, pixel_batch


class SDXLInputs:
    """What SDXL fine-tuning adds around the training loop: latents (cached or encoded per step) and text."""

    def __init__(self, cfg: Any, device: torch.device) -> None:
        self.cfg = cfg
        self.latent_space = LatentSpace(cfg.vae, device) if cfg.vae else None
        self.text = TextEncoders(cfg.text_encoders, device) if cfg.text_encoders else None
        self.text_cache: TextCache | None = None
        self.device = device
        self.captions: list[str] = []

    def check(self, model: Any) -> None:
        """Refuse a UNet whose channels or text widths do not match the VAE and text encoders."""
        unet = model.unet.config
        channels = self.latent_space.channels if self.latent_space else 3
        if unet.in_channels != channels or unet.out_channels != channels:
            where = f"the VAE's latent_channels ({self.cfg.vae})" if self.latent_space else "pixel space (--vae '')"
            raise ValueError(f"the UNet takes {unet.in_channels} channels, {where} has {channels}: match --pretrained and --vae")
        if self.text and (self.text.context_dim, self.text.pooled_dim) != (model.context_dim, model.pooled_dim):
            raise ValueError(f"the text encoders give context {self.text.context_dim} and pooled {self.text.pooled_dim} features, the UNet "
                             f"takes {model.context_dim} and {model.pooled_dim}: match --text-encoders and --pretrained")

    def open_data(self, run_dir: str | Path, *, rank: int, world_size: int, batch_size: int) -> ResumableLoader:
        """The loader's batches, or cached latents (built by rank 0 while the others wait), and captions."""
        from microcond.data.loader import open_training_data

        cfg = self.cfg
        loader = open_training_data(cfg, run_dir, rank=rank, world_size=world_size, batch_size=batch_size)
        dataset = loader.dataset
        if self.text:
            self.captions, missing = read_captions(dataset.source, cfg.data)
            if rank == 0 and missing:
                print(f"data: {missing} of {len(self.captions)} images have no caption: they train with the empty caption", file=sys.stderr)
            if cfg.text_cache:
                self.use_text_cache(rank)
        if not cfg.latent_cache:
            return loader
        cache = None
        for _ in rank_zero_first(rank):  # rank 0 builds, then the others open what it wrote
            cache = LatentCache.build(dataset, self.latent_space, cfg.latent_crops, default_cache_dir(), progress=rank == 0)
        assert cache is not None
        if rank == 0:
            size = cache.sizes()
            print(f"data: latent cache {cache.folder.name}: {cache.crops} crop(s) per image, {size['disk_bytes'] / 2**20:.1f} MiB on disk "
                  f"(memory-mapped), {size['in_memory_bytes'] / 2**10:.0f} KiB in memory, {len(cache.failures)} failed", file=sys.stderr)
        latent_batches = LatentBatches(dataset.source, dataset.buckets, batch_size, seed=cfg.seed, rank=rank, world_size=world_size,
                                       crop_mode=cfg.crop_mode, flip_probability=cfg.flip_probability, cache=dataset.cache,
                                       latent_cache=cache)
        return make_loader(latent_batches, num_workers=cfg.workers)

    def use_text_cache(self, rank: int = 0) -> None:
        """Encode every distinct caption once into the text cache, then free the text encoders."""
        grid = next((c for c in self.captions if c), "")
        for _ in rank_zero_first(rank):  # rank 0 builds, then the others open what it wrote
            self.text_cache = TextCache.build([*self.captions, grid], self.text, default_cache_dir(), progress=rank == 0)
        if rank == 0:
            print(f"data: text cache {self.text_cache.folder.name}: {len(self.text_cache.row_of)} distinct captions, "
                  f"{self.text_cache.disk_bytes() / 2**20:.1f} MiB on disk (memory-mapped)", file=sys.stderr)
        self.text.encoders = []  # their memory is free from here on

    def embed(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(context, pooled) of captions: from the text cache when there is one, else the encoders."""
        if self.text_cache is not None:
            return self.text_cache.lookup(captions, self.device)
        return self.text.encode(captions)

    @torch.no_grad()
    def prepare(self, raw: dict[str, torch.Tensor]) -> Batch:
        """The loop's batch: cached "latents", or "pixels" encoded by the VAE (or taken to [-1, 1]
        without one), and the captions' context and pooled text."""
        if "latents" in raw:
            batch = Batch(x0=raw["latents"], ids=raw["ids"], labels=raw["labels"])
        elif self.latent_space is not None:
            batch = Batch(x0=self.latent_space.encode(raw["pixels"]), ids=raw["ids"], labels=raw["labels"])  # (b, C, h, w)
        else:
            batch = pixel_batch(raw)
        if self.text is not None:
            if not self.captions:
                raise ValueError("a text run needs its captions: let the training loop open the data (--data), or set SDXLInputs.captions")
            batch = batch.with_text(*self.embed([self.captions[i] for i in raw["index"].tolist()]))
        return batch

    def grid_text(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Text for periodic sample grids: the first non-empty training caption (one for all samples)."""
        if self.text is None:
            return None
        return self.embed([next((c for c in self.captions if c), "")])  # (1, L, D), (1, P)
