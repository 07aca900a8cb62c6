"""Checkpoint directories: checksums, refused corruption, fallback to the newest that verifies, pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from microcond.train.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, load_newest, save_checkpoint


def write(root: Path, step: int, keep: int = 5) -> Path:
    tensors = {"model": {"w": torch.arange(64, dtype=torch.float32) + step}, "ema": {"w": torch.ones(64)}}
    return save_checkpoint(root, step, tensors, {"data": {"position": step}}, keep)


def flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_state(path: Path, change) -> None:
    state = json.loads((path / "state.json").read_text())
    change(state)
    (path / "state.json").write_text(json.dumps(state))


def test_state_records_each_files_sha256_and_a_flipped_byte_is_refused(tmp_path):
    path = write(tmp_path, 1)
    state = json.loads((path / "state.json").read_text())
    assert set(state["sha256"]) == set(state["files"]) == {"model.safetensors", "ema.safetensors"}
    tensors, _ = load_checkpoint(path)
    assert torch.equal(tensors["model"]["w"], torch.arange(64) + 1.0)
    flip_byte(path / "model.safetensors")  # inside the tensor data: safetensors itself would load it
    with pytest.raises(CheckpointError, match="model.safetensors does not match its sha256"):
        load_checkpoint(path)


CORRUPTIONS = {
    "truncated file": lambda p: (p / "ema.safetensors").write_bytes((p / "ema.safetensors").read_bytes()[:40]),
    "missing file": lambda p: (p / "ema.safetensors").unlink(),
    "bad json": lambda p: (p / "state.json").write_text('{"step": 1, "files": ['),
    "missing key": lambda p: edit_state(p, lambda s: s.pop("files")),
    "needed field missing": lambda p: edit_state(p, lambda s: s.pop("data")),
    "absolute path": lambda p: edit_state(p, lambda s: s["files"].append("/etc/hostname")),
    "parent path": lambda p: edit_state(p, lambda s: s["files"].append("../step-00000001/model.safetensors")),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_checkpoint_is_refused_with_its_reason(tmp_path, corruption):
    path = write(tmp_path, 1)
    CORRUPTIONS[corruption](path)
    with pytest.raises(CheckpointError, match="step-00000001"):
        load_checkpoint(path, stems=("model", "ema"), keys=("data",))


def test_checkpoint_written_without_checksums_still_loads(tmp_path):
    path = write(tmp_path, 1)
    edit_state(path, lambda s: s.pop("sha256"))
    tensors, state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(tensors["ema"]["w"], torch.ones(64))


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_newest_that_verifies_is_used_and_the_skipped_one_named(tmp_path, capsys, corruption):
    write(tmp_path, 1)
    newest = write(tmp_path, 2)
    CORRUPTIONS[corruption](newest)
    path, tensors, state = load_newest(tmp_path, stems=("model", "ema"), keys=("data",))
    assert path.name == "step-00000001" and state["data"] == {"position": 1}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step-00000002" in err[0]
    assert newest.exists()  # left in place, never deleted


def test_no_checkpoint_that_verifies_is_an_error_and_none_at_all_is_none(tmp_path):
    assert load_newest(tmp_path / "nothing") is None
    flip_byte(write(tmp_path, 1) / "model.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint .* verifies"):
        load_newest(tmp_path)


def test_pruning_keeps_the_checkpoint_just_written_below_a_newer_unreadable_one(tmp_path):
    # A run resumed from step 1 past a corrupt step 3: saving step 2 with keep 1 must not leave only step 3.
    write(tmp_path, 1)
    flip_byte(write(tmp_path, 3) / "model.safetensors")
    write(tmp_path, 2, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    write(tmp_path, 3, keep=1)  # the rerun of step 3 replaces the corrupt one
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003"]
    load_checkpoint(tmp_path / "step-00000003")
