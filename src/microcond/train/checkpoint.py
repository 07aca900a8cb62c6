"""Crash-safe checkpoints: safetensors for tensors, JSON for everything else, atomic directories.

A checkpoint is a directory ``RUN/checkpoints/step-00001234/`` holding ``model.safetensors``,
``ema.safetensors``, ``optimizer.safetensors`` and ``state.json`` (which records each tensor
file's sha256: safetensors has no checksum of its own). It is written under a
temporary name, every file is fsynced, and only then is the directory renamed into place (and
the parent fsynced), so a process killed at any moment leaves either a complete checkpoint or
a ``.tmp-*`` directory that is never read and is removed on the next start. No pickle anywhere.
Reading verifies the checksums; :func:`load_newest` falls back past checkpoints that fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from microcond.base.files import fsync_dir

CHECKPOINT_RE = re.compile(r"^step-(\d{8})$")
STATE_FILE = "state.json"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be trusted: unreadable, incomplete, or not matching its checksums."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Split an optimizer state into flat tensors (safetensors) and JSON-able param groups.

    A slot holding a dict of tensors (bitsandbytes' quantisation state) becomes ``index.slot/key``
    entries. A Python number becomes a 0-d tensor, and ``step`` comes back as the type it had
    (bitsandbytes counts it in an int, torch in a tensor).
    """
    sd = optimizer.state_dict()
    tensors = {}
    for index, slots in sd["state"].items():
        for name, value in slots.items():
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, item in items:
                key = f"{index}.{name}" + (f"/{sub}" if sub is not None else "")
                if name == "step" and isinstance(item, int):
                    tensors[key + "/int"] = torch.tensor(1)  # marks a Python int to restore
                if not torch.is_tensor(item):
                    item = torch.tensor(item)
                elif sub is not None:  # bitsandbytes shares one quantisation map among parameters; safetensors stores no aliases
                    item = item.detach().to("cpu", copy=True)  # a copy in host memory, not beside the model
                tensors[key] = item
    return tensors, sd["param_groups"]


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.endswith("/int"):
            continue
        index, name = key.split(".", 1)
        slots = state.setdefault(int(index), {})
        if "/" in name:
            name, sub = name.split("/", 1)
            slots.setdefault(name, {})[sub] = value
        else:
            slots[name] = int(value.item()) if f"{key}/int" in tensors else value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(root: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict, keep: int) -> Path:
    """Write ``tensors`` (file stem -> tensors) and ``state`` as checkpoint ``step``; keep the newest ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        digests = {}
        for stem, group in tensors.items():
            path = tmp / f"{stem}.safetensors"
            save_file({k: v.detach().contiguous().cpu() for k, v in group.items()}, str(path))
            _fsync_file(path)
            digests[path.name] = file_sha256(path)  # read back: the bytes that reached the file
        state = {**state, "step": step, "files": sorted(digests), "sha256": digests}
        with open(tmp / STATE_FILE, "w") as fh:  # written last: its presence marks a complete directory
            json.dump(state, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
    except (OSError, SafetensorError) as err:  # disk full, quota, I/O error: the older checkpoints stay
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"could not write checkpoint {final}: {str(err).strip()}; the checkpoints before it are untouched") from None
    if final.exists():  # a rerun of the same step after a crash between rename and prune
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)
    # Newer checkpoints (left unreadable by a run that resumed from an older one) neither count
    # nor go: the one just written always stays, and its rerun of their step replaces them.
    for old in [p for p in list_checkpoints(root) if p.name <= final.name][:-keep]:
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


def load_checkpoint(path: Path, stems: Sequence[str] = (), keys: Sequence[str] = ()) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read and verify one checkpoint directory: (file stem -> tensors, state); else CheckpointError.

    Args:
        stems: tensor files the caller needs ("model", "ema", ...).
        keys: state fields the caller needs besides "step" and "files".

    A checkpoint written before checksums were recorded loads unverified.
    """
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: {STATE_FILE} is unreadable ({err})") from None
    missing = [k for k in ("step", "files", *keys) if k not in state] if isinstance(state, dict) else ["everything"]
    if missing:
        raise CheckpointError(f"{path}: {STATE_FILE} lacks {', '.join(missing)}")
    files, digests = state["files"], state.get("sha256", {})
    if not (isinstance(state["step"], int) and isinstance(files, list) and isinstance(digests, dict)):
        raise CheckpointError(f"{path}: {STATE_FILE} has a malformed step, files or sha256 entry")
    outside = [n for n in files if not isinstance(n, str) or n in ("", ".", "..") or Path(n).name != n]
    if outside:
        raise CheckpointError(f"{path}: {STATE_FILE} lists {outside[0]!r}, which is not a file inside the checkpoint")
    absent = [s for s in stems if f"{s}.safetensors" not in files]
    if absent:
        raise CheckpointError(f"{path}: {STATE_FILE} lists no {', '.join(absent)} tensors")
    tensors = {}
    for name in files:
        try:
            if name in digests and file_sha256(path / name) != digests[name]:
                raise CheckpointError(f"{path}: {name} does not match its sha256 in {STATE_FILE}")
            tensors[name.removesuffix(".safetensors")] = load_file(str(path / name))
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"{path}: {name} is unreadable ({err})") from None
    return tensors, state


def load_newest(root: Path, stems: Sequence[str] = (), keys: Sequence[str] = ()) -> tuple[Path, dict[str, dict[str, torch.Tensor]], dict] | None:
    """The newest checkpoint under ``root`` that verifies, as (path, tensors, state); None when there is none.

    Each newer one that fails is named with its reason, one line on stderr, and left in place.
    Raises CheckpointError when checkpoints exist but none verifies (starting over is the user's call).
    """
    found = list_checkpoints(root)
    for path in reversed(found):
        try:
            tensors, state = load_checkpoint(path, stems, keys)
        except CheckpointError as err:
            print(f"skipping checkpoint {err}", file=sys.stderr)
            continue
        return path, tensors, state
    if found:
        raise CheckpointError(f"no checkpoint in {root} verifies (reasons above); move the folder aside to start over")
    return None
