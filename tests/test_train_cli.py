"""Training through the command line on real image files: export, DDP under torchrun, SIGKILLs with corruptions."""

from __future__ import annotations

import json
import os
import signal
import socket
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from microcond.cli.main import main
from microcond.train.checkpoint import list_checkpoints
from microcond.train.launch import run_lock

FLAGS = ["--preset", "tiny", "--resolution", "16", "--batch-size", "4", "--precision", "fp32", "--sample-every", "0", "--log-every", "1", "--num-classes", "2"]


@pytest.fixture()
def env(tmp_path, monkeypatch) -> dict:
    monkeypatch.setenv("MICROCOND_CACHE", str(tmp_path / "cache"))
    return {**os.environ, "MICROCOND_CACHE": str(tmp_path / "cache"), "MICROCOND_NO_REEXEC": "1", "OMP_NUM_THREADS": "1"}


def weights(run: Path) -> dict:
    return load_file(str(list_checkpoints(run / "checkpoints")[-1] / "model.safetensors"))


def test_train_export_and_load_in_diffusers(tmp_path, image_folder, env):
    from diffusers import UNet2DConditionModel

    run = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--out", str(run), "--steps", "3", "--no-progress", *FLAGS]) == 0
    assert json.loads((run / "config.json").read_text())["steps"] == 3
    assert main(["export", str(run), "--diffusers", str(tmp_path / "unet")]) == 0
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    ema = load_file(str(list_checkpoints(run / "checkpoints")[-1] / "ema.safetensors"))
    ours = {k.removeprefix("unet."): v for k, v in ema.items() if k.startswith("unet.")}
    theirs = unet.state_dict()
    assert set(ours) == set(theirs)  # SDXL parameter names, nothing renamed
    bias = "add_embedding.linear_1.bias"  # the pixel presets' centred micro features are folded into it
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k != bias)
    from microcond.model import build_denoiser, center_bias
    from microcond.sample.run import run_config

    model = build_denoiser(run_config(run))
    assert model.micro_center.any() and not torch.equal(ours[bias], theirs[bias])
    assert torch.equal(center_bias(ours, model.micro_center, model.pooled_dim, prefix="")[bias], theirs[bias])
    assert unet.config.addition_embed_type == "text_time"


def test_refuses_missing_data_and_bad_flags(tmp_path, env, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), *FLAGS]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), *FLAGS]) == 2
    assert "must be an image folder" in capsys.readouterr().err


@pytest.mark.parametrize("launcher", ["torchrun", "procs"])
def test_two_processes_match_one(tmp_path, image_folder, env, launcher):
    common = ["--data", str(image_folder), "--steps", "3", "--no-progress", *FLAGS]
    one = subprocess.run([sys.executable, "-m", "microcond.cli", "train", "--out", str(tmp_path / "one"), *common], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    cli = ["-m", "microcond.cli", "train", "--out", str(tmp_path / "two"), *common]
    if launcher == "torchrun":
        with socket.socket() as sock:  # a free port, not a fixed one another process may hold
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", *cli],
                             env=env, capture_output=True, text=True, timeout=300)
    else:  # microcond launches its own ranks
        two = subprocess.run([sys.executable, *cli, "--procs", "2"], env=env, capture_output=True, text=True, timeout=300)
        assert "2 data-parallel processes x 1 thread" in two.stderr
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("trained to step 3") == 1  # one report, from rank 0
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    gap = sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt().item()
    moved = sum(((a[k] - 0) ** 2).sum() for k in a).sqrt().item()
    assert gap < 1e-4 * moved, (gap, moved)
    # Only rank 0 wrote: one metrics line per step.
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 3


def test_killing_the_launcher_ends_its_ranks(tmp_path, image_folder, env):
    cmd = [sys.executable, "-m", "microcond.cli", "train", "--out", str(tmp_path / "run"), "--data", str(image_folder),
           "--steps", "100000", "--no-progress", "--procs", "2", *FLAGS]
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in launcher.stderr:  # rank 0 says what data it trains on once both ranks run
        if line.startswith("data:"):
            break
    ranks = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()]
    assert len(ranks) == 2
    exits = [os.pidfd_open(pid) for pid in ranks]  # readable when the process ends: an event to await
    launcher.kill()
    launcher.wait()
    for fd in exits:
        assert select.select([fd], [], [], 60)[0] == [fd], "a rank outlived its launcher by a minute"
        os.close(fd)
    # The run's lock is free again for the next start.
    with run_lock(tmp_path / "run"):
        pass


def _corrupt(run: Path, kind: str) -> None:
    """Damage what a crash or a bad disk leaves: the newest checkpoint's tensors or state, or the log."""
    newest = list_checkpoints(run / "checkpoints")[-1]
    if kind == "flip":
        data = bytearray((newest / "model.safetensors").read_bytes())
        data[len(data) // 2] ^= 0x10
        (newest / "model.safetensors").write_bytes(bytes(data))
    elif kind == "state":
        (newest / "state.json").write_text((newest / "state.json").read_text()[:40])
    elif kind == "metrics":
        with open(run / "metrics.jsonl", "a") as fh:
            fh.write('{"step": 99, "loss": 0.1')  # a row cut by the kill


def test_sigkills_and_corruptions_then_rerun_match_uninterrupted(tmp_path, image_folder, env):
    """A run killed four times, its newest checkpoint or log damaged after some kills, ends bitwise equal."""
    common = ["--data", str(image_folder), "--steps", "12", "--checkpoint-every", "1", "--keep-checkpoints", "3", "--no-progress", *FLAGS]
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "microcond.cli", "train", "--out", str(run), *common]
    ckpts = run / "checkpoints"
    kills = 0
    for delay, damage in ((0.2, None), (0.05, "flip"), (0.3, "state"), (0.1, "metrics")):
        start = [p.name for p in list_checkpoints(ckpts)][-1:]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        while time.time() < deadline and [p.name for p in list_checkpoints(ckpts)][-1:] == start and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(delay)  # somewhere inside a later step or checkpoint write
        proc.send_signal(signal.SIGKILL)
        kills += proc.wait() == -signal.SIGKILL
        if damage and len(list_checkpoints(ckpts)) >= 2:
            _corrupt(run, damage)
    assert kills >= 3, "the run finished before it could be killed"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".tmp-")]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    full = subprocess.run([sys.executable, "-m", "microcond.cli", "train", "--out", str(tmp_path / "full"), *common], env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    a, b = weights(run), weights(tmp_path / "full")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_export_refuses_folders_it_reads_or_did_not_write(tmp_path, image_folder, env, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--out", str(run), "--steps", "1", "--no-progress", *FLAGS]) == 0
    capsys.readouterr()
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("keep me")
    for out, reason in ((run, "RUN"), (run / "unet", "RUN"), (tmp_path, "RUN"), (notes, "existing file"), (tmp_path / "foreign", "not an earlier export")):
        assert main(["export", str(run), "--diffusers", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--diffusers" in err[0] and str(out) in err[0] and reason in err[0], err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot
    assert notes.read_text() == "keep me" and [p.name for p in (tmp_path / "foreign").iterdir()] == ["keep.txt"]
    # An earlier export is replaced whole; nothing is left beside it.
    for _ in range(2):
        assert main(["export", str(run), "--diffusers", str(tmp_path / "unet")]) == 0
    assert (tmp_path / "unet" / "microcond.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "foreign", "notes.txt", "run", "unet"]


def test_a_start_that_fails_on_the_data_leaves_no_config(tmp_path, image_folder, env, capsys):
    run = tmp_path / "run"
    common = ["train", "--data", str(image_folder), "--out", str(run), "--steps", "1", "--no-progress", *FLAGS]
    assert main([*common, "--batch-size", "64"]) == 2  # 24 images: no bucket holds a batch
    err = capsys.readouterr().err.strip().splitlines()
    assert "lower batch_size" in err[-1] and not any("Traceback" in line for line in err)
    assert sorted(p.name for p in run.iterdir()) == [".lock", "data.json"]  # no config; the data's report says why
    assert main(common) == 0  # the corrected command is a fresh start, not "a different config"
    assert json.loads((run / "config.json").read_text())["batch_size"] == 4


def test_second_training_on_a_locked_run_is_one_line_naming_the_holder(tmp_path, image_folder, env, capsys):
    from microcond.train.launch import run_lock

    run = tmp_path / "run"
    with run_lock(run):
        assert main(["train", "--data", str(image_folder), "--out", str(run), "--steps", "1", "--no-progress", *FLAGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pid {os.getpid()})" in err and "--out" in err, err
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


@pytest.mark.parametrize("cores, batch, accumulation, layout", [
    (2, 32, 1, (2, 1)), (1, 32, 1, (1, 1)), (4, 6, 1, (3, 1)), (3, 32, 1, (2, 1)), (2, 32, 32, (1, 2)), (16, 32, 1, (8, 2)),
])
def test_layout_is_data_parallel_over_free_cores_dividing_the_batch(cores, batch, accumulation, layout):
    from microcond.train.launch import plan_layout

    assert plan_layout(cores, batch, accumulation) == layout


@pytest.mark.parametrize("busy, limit, expected", [
    ((0.0, 0.0), 2, 2), ((1.0, 0.0), 2, 1), ((0.6, 0.0), 2, 1), ((0.4, 0.0), 2, 2), ((1.0, 1.0), 2, 1), ((0.0, 0.0), 1, 1),
])
def test_free_cores_takes_off_the_cores_others_keep_busy(busy, limit, expected):
    from microcond.train.launch import cores_left

    before = {0: (1000, 500), 1: (2000, 900), 7: (5, 5)}  # {cpu: (total ticks, idle ticks)}; cpu 7 is not ours
    after = {cpu: (total + 100, idle + round(100 * (1 - load))) for (cpu, (total, idle)), load in zip(before.items(), (*busy, 1.0))}
    assert cores_left(before, after, [0, 1], limit) == expected


def test_free_cores_reads_this_machine():
    from microcond.train.launch import free_cores

    assert 1 <= free_cores(0.05) <= len(os.sched_getaffinity(0))