"""SDXL fine-tuning: VAE latents, the two text encoders, captions, a latent cache, pipeline export.

Conditioning as published (SDXL section 2.1, sgm ``GeneralConditioner``; diffusers
``StableDiffusionXLPipeline.encode_prompt`` is the oracle in the tests): the cross-attention
context is ``concat(penultimate hidden states of CLIP ViT-L, penultimate hidden states of OpenCLIP
bigG)`` per token (768 + 1280 = 2048), and the pooled slot of the ``text_time`` embedding holds
bigG's projected pooled output (1280). A dropped caption zeroes both (sgm ``ucg_rate``).

Latents are the VAE posterior's mean, shifted and scaled by the VAE config
(``(mean - shift_factor) * scaling_factor``). The mean is deterministic, so a cached latent
equals a freshly encoded one; sgm samples from the posterior instead.

Everything is read from local folders (``local_files_only=True``); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from microcond.data.loader import BucketBatches, ImageSource, ResumableLoader, default_cache_dir, make_loader
from microcond.data.pixelcache import cache_key, staged

LATENT_CACHE_VERSION = 1
TEXT_PARTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def require_folder(path: str | Path, flag: str, holds: str) -> Path:
    """``path`` as a Path if it is a folder with ``config.json`` (or the named parts), else one clear error."""
    folder = Path(path)
    parts = TEXT_PARTS if flag == "--text-encoders" else ("config.json",)
    missing = [p for p in parts if not (folder / p).exists()]
    if not folder.is_dir() or missing:
        raise ValueError(f"{flag} {str(path)!r} must be a local folder holding {holds}; "
                         f"{'it does not exist' if not folder.is_dir() else 'missing ' + ', '.join(missing)} "
                         f"(nothing is downloaded: point {flag} at a copy on disk)")
    return folder


def folder_identity(folder: Path) -> str:
    """Hash of every file's name and bytes under ``folder``: the same weights, the same identity."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\n".encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:24]


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
        x = pixels.to(self.vae.device, torch.float32) / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        mean = self.vae.encode(x).latent_dist.mean  # (B, C, h, w)
        return (mean.float() - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, H, W) float32 images in [-1, 1]."""
        z = latents.to(self.vae.device, torch.float32) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.float().clamp(-1.0, 1.0)


class TextEncoders:
    """SDXL's two frozen CLIP text encoders: captions -> (context (B, 77, d1+d2), pooled (B, d2))."""

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu") -> None:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        self.folder = require_folder(folder, "--text-encoders", f"{', '.join(p + '/' for p in TEXT_PARTS)} (an SDXL checkpoint folder)")
        load = dict(local_files_only=True)
        weights = dict(load, use_safetensors=True)  # never unpickle a .bin
        self.tokenizers = [CLIPTokenizer.from_pretrained(self.folder / name, **load) for name in ("tokenizer", "tokenizer_2")]
        self.encoders = [
            CLIPTextModel.from_pretrained(self.folder / "text_encoder", **weights).to(device).eval().requires_grad_(False),
            CLIPTextModelWithProjection.from_pretrained(self.folder / "text_encoder_2", **weights).to(device).eval().requires_grad_(False),
        ]
        self.context_dim = sum(e.config.hidden_size for e in self.encoders)  # 768 + 1280 for SDXL
        self.pooled_dim = int(self.encoders[1].config.projection_dim)  # 1280 for SDXL

    def identity(self) -> str:
        return folder_identity(self.folder)

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token context (B, L, context_dim) and pooled (B, pooled_dim), float32, as encode_prompt."""
        states, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders):
            tokens = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                               truncation=True, return_tensors="pt").input_ids.to(encoder.device)  # (B, L)
            out = encoder(tokens, output_hidden_states=True)
            states.append(out.hidden_states[-2])  # (B, L, d): penultimate layer (SDXL section 2.1)
            pooled = out[0]  # the last encoder's text_embeds: (B, pooled_dim)
        return torch.cat(states, dim=-1).float(), pooled.float()  # (B, L, d1 + d2), (B, pooled_dim)


def read_captions(source: ImageSource, data: str | Path) -> tuple[list[str], int]:
    """One caption per row of ``source`` and the count of rows without one (given "").

    Folders: ``metadata.jsonl`` records ``{"file", "caption"}`` (or ``"text"``), else a sidecar
    ``IMAGE.txt``. Shards: the sample's ``.txt`` member, else ``caption``/``text`` in its ``.json``.
    """
    captions: list[str | None] = [None] * len(source)
    folder = Path(data)
    by_file: dict[str, str] = {}
    if folder.is_dir() and (folder / "metadata.jsonl").is_file():
        for number, line in enumerate((folder / "metadata.jsonl").read_text().splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError as err:
                    raise ValueError(f"{folder / 'metadata.jsonl'}:{number}: not JSON ({err})") from None
                text = record.get("caption", record.get("text"))
                if isinstance(text, str) and "file" in record:
                    by_file[Path(record["file"]).as_posix()] = text
    shards: dict[str, list[tuple[int, str]]] = {}
    for row, (name, (file, offset, _)) in enumerate(zip(source.names, source.locations)):
        if offset >= 0:  # a tar member: name is "shard:key"
            shards.setdefault(file, []).append((row, name[len(file) + 1:]))
            continue
        rel = Path(os.path.relpath(name, os.path.abspath(folder))).as_posix() if folder.is_dir() else name
        if rel in by_file:
            captions[row] = by_file[rel]
        elif (sidecar := Path(name).with_suffix(".txt")).is_file():
            captions[row] = sidecar.read_text().strip()
    for shard, rows in shards.items():
        found = _shard_captions(shard)
        for row, key in rows:
            captions[row] = found.get(key)
    missing = sum(c is None for c in captions)
    return [c or "" for c in captions], missing


def _shard_captions(shard: str) -> dict[str, str]:
    """``{key: caption}`` from a tar's ``KEY.txt`` members, else ``caption``/``text`` of ``KEY.json``."""
    found: dict[str, str] = {}
    try:
        _read_captions(shard, found)
    except (tarfile.TarError, EOFError):  # truncated: index_shards listed the samples it lost
        pass
    return found


def _read_captions(shard: str, found: dict[str, str]) -> None:
    from webdataset.tariterators import base_plus_ext

    with tarfile.open(shard, "r:") as tar:
        for member in tar:
            key, ext = base_plus_ext(member.name)
            if not member.isfile() or key is None or ext.lower() not in ("txt", "json"):
                continue
            raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
            if ext.lower() == "txt":
                found[key] = raw.strip()
            elif key not in found:
                try:
                    meta = json.loads(raw)
                except ValueError:
                    continue  # index_shards already listed this sample as skipped
                text = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
                if isinstance(text, str):
                    found[key] = text


class TextCache:
    """Each distinct caption's (context, pooled) embedding, computed once, memory-mapped float16.

    The text encoders are frozen and captions do not change, so a run can read these files
    instead of running both encoders every step (and free their memory). Layout of
    ``CACHE/text-<key>/``: ``context.npy`` (U, L, D), ``pooled.npy`` (U, P), ``captions.json`` (the U
    distinct captions, in row order). The key covers the encoders' weights and the captions.
    Disk: U x (L x D + P) x 2 bytes, about 315 KB per distinct caption at SDXL sizes.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.row_of = {c: i for i, c in enumerate(json.loads((self.folder / "captions.json").read_text()))}
        self.context = np.load(self.folder / "context.npy", mmap_mode="r")  # (U, L, D) float16
        self.pooled = np.load(self.folder / "pooled.npy", mmap_mode="r")  # (U, P) float16

    @classmethod
    def build(cls, captions: Sequence[str], text: TextEncoders, cache_dir: str | Path, *, batch: int = 32, progress: bool = True) -> "TextCache":
        """Encode the distinct captions once, or reuse the files with the same key."""
        distinct = sorted(set(captions))
        key = hashlib.sha256(json.dumps([text.identity(), distinct]).encode()).hexdigest()[:24]
        folder = Path(cache_dir) / f"text-{key}"
        if (folder / "captions.json").is_file():
            return cls(folder)
        with staged(cache_dir, folder.name, "captions.json") as tmp:
            context = pooled = None
            for start in tqdm(range(0, len(distinct), batch), desc="text cache", unit="batch", disable=not progress, file=sys.stderr):
                c, p = text.encode(distinct[start:start + batch])  # (b, L, D), (b, P)
                if context is None:
                    context = np.lib.format.open_memmap(tmp / "context.npy", mode="w+", dtype=np.float16, shape=(len(distinct), *c.shape[1:]))
                    pooled = np.lib.format.open_memmap(tmp / "pooled.npy", mode="w+", dtype=np.float16, shape=(len(distinct), p.shape[1]))
                context[start:start + len(c)] = c.cpu().numpy()
                pooled[start:start + len(p)] = p.cpu().numpy()
            context.flush()
            pooled.flush()
            del context, pooled
            (tmp / "captions.json").write_text(json.dumps(distinct))  # written last: marks a complete folder
        return cls(folder)

    def lookup(self, captions: Sequence[str], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(context (B, L, D), pooled (B, P)) float32 for captions that were cached."""
        rows = [self.row_of[c] for c in captions]
        context = torch.from_numpy(np.stack([self.context[r] for r in rows])).float()
        pooled = torch.from_numpy(np.stack([self.pooled[r] for r in rows])).float()
        return context.to(device), pooled.to(device)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir())


class LatentCache:
    """Each image's latents for ``crops`` crops, with the ids of each crop, memory-mapped float16.

    Crop ``k`` of image ``i`` is the crop the loader makes for it in epoch ``k`` (same seed,
    crop mode, flip), so a run with the cache trains on exactly the crops (up to float16
    rounding of the latents) that re-encoding would give in its first ``crops`` epochs; epoch
    ``e`` uses crop ``e mod crops``. Layout of ``CACHE/latents-<key>/``: ``latents.npy`` (flat
    float16), ``offsets.npy`` (N+1,), ``shapes.npy`` (N, 3) ``(C, h, w)``, ``ids.npy``
    (N, crops, 6) int64 (the MicroCond of each crop, crop offsets included), ``meta.json``.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.key, self.crops, self.settings = meta["key"], int(meta["crops"]), meta["settings"]
        self.failures: list[tuple[int, str, str]] = [tuple(f) for f in meta["failures"]]
        self.offsets = np.load(self.folder / "offsets.npy")
        self.shapes = np.load(self.folder / "shapes.npy")
        self.ids = np.load(self.folder / "ids.npy")
        self._latents: np.ndarray | None = None

    @staticmethod
    def key_for(dataset: BucketBatches, latent_space: LatentSpace, crops: int) -> tuple[str, dict]:
        """The cache key and the settings it covers: images, buckets, crop mode, flip, seed, VAE."""
        settings = {"version": LATENT_CACHE_VERSION, "images": cache_key(dataset.source, dataset.buckets, dataset.background, dataset.fast),
                    "buckets": [list(b) for b in dataset.buckets], "crop_mode": dataset.crop_mode,
                    "flip_probability": dataset.flip_probability, "seed": dataset.seed, "crops": crops,
                    "vae": latent_space.identity(), "dtype": "float16", "latent": "posterior mean"}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24], settings

    @classmethod
    def build(cls, dataset: BucketBatches, latent_space: LatentSpace, crops: int, cache_dir: str | Path, *,
              batch: int = 8, progress: bool = True) -> "LatentCache":
        """Encode every image's crops once (or reuse the cache with the same key)."""
        if dataset.crop_mode == "center" and dataset.flip_probability == 0:
            crops = 1  # every epoch's crop is the same: one is enough
        key, settings = cls.key_for(dataset, latent_space, crops)
        folder = Path(cache_dir) / f"latents-{key}"
        if (folder / "meta.json").is_file():
            return cls(folder)
        n = len(dataset.source)
        targets = [dataset.buckets[b] for b in dataset.bucket_of.tolist()]
        shapes = np.array([latent_space.latent_shape(t) for t in targets], dtype=np.int64).reshape(n, 3)
        offsets = np.concatenate([[0], np.cumsum(shapes.prod(axis=1) * crops)]).astype(np.int64)
        with staged(cache_dir, folder.name, "meta.json") as tmp:
            latents = np.lib.format.open_memmap(tmp / "latents.npy", mode="w+", dtype=np.float16, shape=(int(offsets[-1]),))
            ids = np.zeros((n, crops, 6), dtype=np.int64)
            rows = np.sort(np.concatenate(dataset.members)) if dataset.members else np.zeros(0, np.int64)
            failures: dict[int, tuple[int, str, str]] = {}
            jobs = [(int(i), k) for b in range(len(dataset.buckets)) for i in rows[dataset.bucket_of[rows] == b] for k in range(crops)]
            bar = tqdm(total=len(jobs), desc="latent cache", unit="crop", disable=not progress, file=sys.stderr)
            for start in range(0, len(jobs), batch):
                pixels, done = [], []
                for i, k in jobs[start:start + batch]:  # a chunk may straddle two buckets: encoded by shape below
                    try:
                        image, cond = dataset.sample(k, i, targets[i])  # (th, tw, 3) uint8, MicroCond
                    except (OSError, ValueError) as err:
                        failures[i] = (i, dataset.source.names[i], str(err) or type(err).__name__)
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
                        size = z.size
                        latents[offsets[i] + k * size:offsets[i] + (k + 1) * size] = z.reshape(-1)
                bar.update(len(jobs[start:start + batch]))
            bar.close()
            latents.flush()
            del latents
            np.save(tmp / "offsets.npy", offsets)
            np.save(tmp / "shapes.npy", shapes)
            np.save(tmp / "ids.npy", ids)
            (tmp / "meta.json").write_text(json.dumps({"key": key, "crops": crops, "settings": settings, "images": n,
                                                       "failures": sorted(failures.values())}, indent=1))
        return cls(folder)

    @property
    def latents(self) -> np.ndarray:
        if self._latents is None:
            self._latents = np.load(self.folder / "latents.npy", mmap_mode="r")
        return self._latents

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_latents": None}  # workers map the file themselves

    def get(self, i: int, crop: int) -> np.ndarray:
        """Latents of crop ``crop`` of row ``i``: (C, h, w) float16, a read-only view of the map."""
        shape = tuple(int(v) for v in self.shapes[i])
        size = int(np.prod(shape))
        start = int(self.offsets[i]) + crop * size
        return self.latents[start:start + size].reshape(shape)

    def failed_rows(self) -> list[int]:
        return [row for row, _, _ in self.failures]

    def sizes(self) -> dict[str, int]:
        """Bytes on disk; latents are memory-mapped (page cache shared by workers), ids and index in memory."""
        return {"disk_bytes": sum(p.stat().st_size for p in self.folder.iterdir()), "latent_bytes": int(self.offsets[-1]) * 2,
                "in_memory_bytes": int(self.ids.nbytes + self.offsets.nbytes + self.shapes.nbytes)}


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
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        cache = None
        for turn in (0, 1):  # rank 0 builds, then the others open what it wrote
            if (rank == 0) == (turn == 0):
                cache = LatentCache.build(dataset, self.latent_space, cfg.latent_crops, default_cache_dir(), progress=rank == 0)
            if dist:
                torch.distributed.barrier()
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
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        grid = next((c for c in self.captions if c), "")
        for turn in (0, 1):  # rank 0 builds, then the others open what it wrote
            if (rank == 0) == (turn == 0):
                self.text_cache = TextCache.build([*self.captions, grid], self.text, default_cache_dir(), progress=rank == 0)
            if dist:
                torch.distributed.barrier()
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
    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add "latents" (encoding "pixels" when not cached) and the captions' "context" and "pooled"."""
        batch = dict(batch)
        if self.latent_space is not None and "pixels" in batch:
            batch["latents"] = self.latent_space.encode(batch.pop("pixels"))  # (b, C, h, w)
        if self.text is not None:
            if not self.captions:
                raise ValueError("a text run needs its captions: let the training loop open the data (--data), or set SDXLInputs.captions")
            batch["context"], batch["pooled"] = self.embed([self.captions[i] for i in batch["index"].tolist()])
        return batch

    def grid_text(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Text for periodic sample grids: the first non-empty training caption (one for all samples)."""
        if self.text is None:
            return None
        return self.embed([next((c for c in self.captions if c), "")])  # (1, L, D), (1, P)


def export_pipeline(run_dir: str | Path, out_dir: str | Path, ema: bool = True) -> Path:
    """Write a ``StableDiffusionXLPipeline.from_pretrained`` folder: the run's UNet, its VAE and text encoders.

    The VAE and text encoder folders are hard-linked where the file system allows (else copied);
    the scheduler is SDXL's Euler with the run's betas and prediction type. Written into a fresh
    folder first (see :func:`microcond.runs.export_folder`): never into a folder it reads from.
    """
    from microcond.runs import export_folder, run_config

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = run_config(run_dir)
    if not (cfg.vae and cfg.text_encoders):
        raise ValueError(f"{run_dir} was not trained with --vae and --text-encoders; export its UNet alone with --diffusers DIR")
    vae = require_folder(cfg.vae, "--vae", "the run's AutoencoderKL")
    text = require_folder(cfg.text_encoders, "--text-encoders", ", ".join(TEXT_PARTS))
    with export_folder(run_dir, out_dir, "--pipeline", "unet/microcond.json") as staging:
        _write_pipeline(run_dir, staging, vae, text, ema)
    return out_dir


def _write_pipeline(run_dir: Path, out_dir: Path, vae: Path, text: Path, ema: bool) -> None:
    """The body of :func:`export_pipeline`, written straight into the new folder ``out_dir``."""
    import diffusers
    from diffusers import EulerDiscreteScheduler

    from microcond.runs import write_unet

    write_unet(run_dir, out_dir / "unet", ema=ema)
    copies = {"vae": vae, **{part: text / part for part in TEXT_PARTS}}
    for part, source in copies.items():
        shutil.copytree(source, out_dir / part, copy_function=_link_or_copy)
    scheduler_config = json.loads((run_dir / "scheduler_config.json").read_text())
    EulerDiscreteScheduler(num_train_timesteps=scheduler_config["num_train_timesteps"], beta_start=scheduler_config["beta_start"],
                           beta_end=scheduler_config["beta_end"], beta_schedule=scheduler_config["beta_schedule"],
                           prediction_type=scheduler_config["prediction_type"], timestep_spacing="leading",
                           steps_offset=1).save_pretrained(out_dir / "scheduler")  # SDXL base's inference scheduler
    index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": diffusers.__version__, "force_zeros_for_empty_prompt": True,
             "feature_extractor": [None, None], "image_encoder": [None, None],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
