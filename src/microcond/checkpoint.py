"""Crash-safe checkpoints: safetensors for tensors, JSON for everything else, atomic directories.

A checkpoint is a directory ``RUN/checkpoints/step-00001234/`` holding ``model.safetensors``,
``ema.safetensors``, ``optimizer.safetensors`` and ``state.json``. It is written under a
temporary name, every file is fsynced, and only then is the directory renamed into place (and
the parent fsynced), so a process killed at any moment leaves either a complete checkpoint or
a ``.tmp-*`` directory that is never read and is removed on the next start. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_RE = re.compile(r"^step-(\d{8})$")
STATE_FILE = "state.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Split an optimizer state into flat tensors (safetensors) and JSON-able param groups."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, slots in sd["state"].items():
        for name, value in slots.items():
            tensors[f"{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, sd["param_groups"]


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(root: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict, keep: int) -> Path:
    """Write ``tensors`` (file stem -> tensors) and ``state`` as checkpoint ``step``; keep the newest ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for stem, group in tensors.items():
        path = tmp / f"{stem}.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in group.items()}, str(path))
        _fsync_file(path)
    state = {**state, "step": step, "files": sorted(f"{stem}.safetensors" for stem in tensors)}
    with open(tmp / STATE_FILE, "w") as fh:  # written last: its presence marks a complete directory
        json.dump(state, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():  # a rerun of the same step after a crash between rename and prune
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: p.name)


def remove_partial(root: Path) -> list[Path]:
    """Delete temporary directories left by a killed process; return what was removed."""
    if not root.is_dir():
        return []
    partial = [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read one checkpoint directory: (file stem -> tensors, state)."""
    state = json.loads((path / STATE_FILE).read_text())
    tensors = {}
    for name in state["files"]:
        tensors[name.removesuffix(".safetensors")] = load_file(str(path / name))
    return tensors, state
