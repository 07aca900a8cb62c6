"""Captions and SDXL's two frozen CLIP text encoders, with a memory-mapped cache of their outputs."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from microcond.data.metadata import captions_of
from microcond.data.ragged import MARKER, RaggedArrays
from microcond.data.source import ImageSource
from microcond.sdxl.folders import TEXT_PARTS, folder_identity, require_folder


TEXT_CACHE_VERSION = 2  # 2: the ragged-array layout of data.ragged


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
    by_file = captions_of(folder) if folder.is_dir() else {}
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


class TextCache(RaggedArrays):
    """Each distinct caption's (context, pooled) embedding, computed once, memory-mapped float16.

    The text encoders are frozen and captions do not change, so a run can read these files
    instead of running both encoders every step (and free their memory). A ragged array
    (:mod:`microcond.data.ragged`) in ``CACHE/text-<key>/``: row ``u`` is caption ``u``'s context
    (L, D), ``pooled.npy`` (U, P) beside it, and ``meta.json`` lists the U distinct captions in row
    order. The key covers the encoders' weights and the captions. Disk: U x (L x D + P) x 2
    bytes, about 315 KB per distinct caption at SDXL sizes.
    """

    def __init__(self, folder: str | Path) -> None:
        super().__init__(folder)
        self.row_of = {c: i for i, c in enumerate(self.meta["captions"])}
        self.pooled = self.array("pooled")  # (U, P) float16

    @classmethod
    def build(cls, captions: Sequence[str], text: TextEncoders, cache_dir: str | Path, *, batch: int = 32, progress: bool = True) -> "TextCache":
        """Encode the distinct captions once, or reuse the files with the same key."""
        distinct = sorted(set(captions))
        key = hashlib.sha256(json.dumps([TEXT_CACHE_VERSION, text.identity(), distinct]).encode()).hexdigest()[:24]
        folder = Path(cache_dir) / f"text-{key}"
        if (folder / MARKER).is_file():
            return cls(folder)
        context, pooled = text.encode(distinct[:1])  # the shapes: (1, L, D), (1, P)
        with cls.create(cache_dir, folder.name, [context.shape[1:]] * len(distinct), np.float16) as cache:
            cache.arrays["pooled"] = np.zeros((len(distinct), pooled.shape[1]), dtype=np.float16)
            for start in tqdm(range(0, len(distinct), batch), desc="text cache", unit="batch", disable=not progress, file=sys.stderr):
                c, p = text.encode(distinct[start:start + batch])  # (b, L, D), (b, P)
                for k, (row_c, row_p) in enumerate(zip(c.cpu().numpy(), p.cpu().numpy())):
                    cache.row(start + k)[...] = row_c
                    cache.arrays["pooled"][start + k] = row_p
            cache.finish({"key": key, "captions": distinct})
        return cls(folder)

    def lookup(self, captions: Sequence[str], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(context (B, L, D), pooled (B, P)) float32 for captions that were cached."""
        rows = [self.row_of[c] for c in captions]
        context = torch.from_numpy(np.stack([self.get(r) for r in rows])).float()
        pooled = torch.from_numpy(np.stack([self.pooled[r] for r in rows])).float()
        return context.to(device), pooled.to(device)


def read_prompts(path: str | Path, flag: str = "--prompts") -> list[str]:
    """The non-empty lines of a prompt file (UTF-8 text, one prompt per line), refused with the
    file and the flag named when the file is missing, binary or empty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {str(path)!r} is not UTF-8 text (expected one prompt per line)") from None
    except OSError as err:
        raise ValueError(f"{flag} {str(path)!r}: cannot read it ({err.strerror or err}); expected a text file, one prompt per line") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{flag} {str(path)!r} holds no prompt (one per line)")
    return prompts

