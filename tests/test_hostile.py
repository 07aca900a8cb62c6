"""Hostile inputs, round 3: data that yields nothing, skips that must be counted, loader workers'
errors, and the reports a bad data set must still leave behind. Each test names its defect."""

from __future__ import annotations

import json

import pytest
from test_shards import png, tar_with

from microcond.data.loader import open_training_data
from microcond.data.stream import ShardStream, StreamLoader
from microcond.train.config import TrainConfig

BUCKETS = ((32, 48),)


def _bad_aspect_shard(path, n=4):
    """Samples whose JSON original size has another aspect than their pixels: each fails to decode."""
    members = {}
    for k in range(n):
        members |= {f"k{k}.png": png(40, 60), f"k{k}.json": b'{"original_height": 600, "original_width": 400}'}
    return tar_with(path, members)


def test_1_a_stream_where_every_sample_fails_to_decode_stops_with_counts(tmp_path, capsys):
    shards = [_bad_aspect_shard(tmp_path / f"s{k}.tar") for k in range(2)]
    stream = ShardStream(shards, BUCKETS, 2, epochs=50)  # before the fix: 50 silent epochs, then nothing
    with pytest.raises(ValueError, match=r"gave no usable sample: 8 read, 0 decoded, 8 skipped.*first reasons: .*s\d\.tar:k\d"):
        next(iter(StreamLoader(stream)))
    printed = capsys.readouterr().err.splitlines()
    assert len([line for line in printed if "skipped" in line]) <= stream.skips.echo + 1  # not one line per skip for ever


def test_1_a_stream_with_some_bad_samples_trains_and_counts_them(tmp_path):
    good = [tar_with(tmp_path / f"good{k}.tar", {f"g{k}{j}.png": png(40, 60) for j in range(4)}) for k in range(3)]
    loader = StreamLoader(ShardStream([_bad_aspect_shard(tmp_path / "bad.tar"), *good], BUCKETS, 2, epochs=3), num_workers=2)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 3 * 12  # every good sample of every epoch
    assert loader.skips.count == 3 * 4  # every bad sample of every epoch, counted in the main process
    assert len(loader.skips.kinds) == 1 and "another aspect" in next(iter(loader.skips.kinds))


def test_2_indexed_shards_with_no_valid_sample_name_the_reasons_and_write_data_json(tmp_path):
    shard = _bad_aspect_shard(tmp_path / "bad.tar")
    bad_json = tar_with(tmp_path / "worse.tar", {"k0.png": png(40, 60), "k0.json": b"{not json"})
    for data in (shard, bad_json):
        run = tmp_path / f"run-{data.stem}"
        cfg = TrainConfig(data=str(data), resolution=32)
        with pytest.raises(ValueError, match=r"no usable image in .*skipped.*first reasons: .*\.tar:k0: .*data\.json"):
            open_training_data(cfg, run, rank=0, world_size=1, batch_size=2)
        report = json.loads((run / "data.json").read_text())
        assert report["usable"] == 0 and len(report["skipped_files"]) == report["images"] + report["skipped"] > 0


def test_7_more_loader_workers_than_shards_is_one_line_before_any_worker_starts(tmp_path):
    shards = [tar_with(tmp_path / f"s{k}.tar", {f"k{k}.png": png(40, 60)}) for k in range(2)]
    with pytest.raises(ValueError, match=r"^2 shard\(s\) for 1 rank\(s\) x 4 loader worker\(s\).*--workers 2") as err:
        StreamLoader(ShardStream(shards, BUCKETS, 1), num_workers=4)
    assert "\n" not in str(err.value)


def test_7_a_loader_workers_error_is_its_own_line_not_its_traceback(tmp_path):
    shards = [_bad_aspect_shard(tmp_path / f"s{k}.tar") for k in range(2)]
    with pytest.raises(ValueError) as err:
        list(StreamLoader(ShardStream(shards, BUCKETS, 2, epochs=5), num_workers=2))
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    assert str(err.value).startswith("a whole epoch of 1 shard(s)")


def test_skips_stay_bounded_and_merge_across_processes(capsys):
    from microcond.data.skips import Skips

    worker, main = Skips("w", keep=3, echo=2), Skips("m", keep=3, quiet=True)
    for k in range(1000):
        worker.add(f"s:{k}", f"decoded size ({k}, 40) differs")
        if k % 100 == 99:
            main.merge(worker.drain())
    assert worker.drain() == "" and main.count == worker.count == 1000
    assert main.kinds == {"decoded size (N, N) differs": 1000} and len(main.examples) == 3
    assert len(capsys.readouterr().err.splitlines()) == 3  # two skips and one "counted, not printed"


# ---------------------------------------------------------------- processes, signals, exit codes


def _alive(marker: str) -> list[int]:
    """Pids of processes whose command line holds ``marker``."""
    import os

    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def test_6_sigterm_to_a_streaming_train_stops_its_pipe_commands(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    shard = tar_with(tmp_path / "s.tar", {f"k{k}.png": png(40, 60) for k in range(4)})
    marker = f"sleep 61{os.getpid() % 10}"
    ready = tmp_path / "started"
    # The pipe sends part of the shard, says it started, then stalls: train waits on the data.
    data = f"pipe:head -c 2000 {shard}; touch {ready}; {marker}"
    proc = subprocess.Popen([sys.executable, "-m", "microcond.cli", "train", "--data", data, "--out", str(tmp_path / "run"),
                             "--procs", "1", "--steps", "1", "--batch-size", "2", "--no-progress"], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # until the pipe runs (at most a minute)
            if ready.exists() and _alive(marker):
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 1 and "stopped by SIGTERM" in err, err
    for _ in range(50):
        if not _alive(marker):
            break
        time.sleep(0.1)
    assert not _alive(marker), "the pipe command outlived train"


def test_13_a_rank_killed_by_a_signal_is_named_and_exits_1(monkeypatch, capsys):
    import subprocess
    import sys

    from microcond.train import launch as runtime

    real = subprocess.Popen

    def rank_program(cmd, env, **kw):  # rank 1 dies by SIGKILL, rank 0 would wait for it
        code = "import os, signal, time\nif os.environ['RANK'] == '1': os.kill(os.getpid(), signal.SIGKILL)\ntime.sleep(60)"
        return real([sys.executable, "-c", code], env=env, **kw)

    monkeypatch.setattr(runtime.subprocess, "Popen", rank_program)
    assert runtime.launch_local(["train"], 2, 1) == 1
    assert "rank 1 was killed by SIGKILL" in capsys.readouterr().err


# ------------------------------------------------------------------------ config files and flags


@pytest.mark.parametrize("preset", ["[1]", "{a = 1}", "[]", "0", "false", '""'])
def test_8_10_a_toml_preset_of_another_type_is_refused(tmp_path, preset):
    from microcond.train.config import resolve

    path = tmp_path / "run.toml"
    path.write_text(f"preset = {preset}\n")
    with pytest.raises(ValueError, match="unknown preset"):
        resolve(toml_path=path)


def test_15_binary_config_and_prompt_files_are_named(tmp_path, capsys):
    from microcond.cli.main import main

    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["train", str(binary), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(binary) in err and "not UTF-8" in err, err
    from microcond.sdxl.text import read_prompts

    with pytest.raises(ValueError, match=r"--prompts .*weights\.bin.* is not UTF-8 text"):
        read_prompts(binary)
    with pytest.raises(ValueError, match=r"--prompts .*nowhere.txt.*cannot read it"):
        read_prompts(tmp_path / "nowhere.txt")


@pytest.mark.parametrize("argv, flag", [
    (["sample", "RUN", "--original-size", "99999999999999999999", "5"], "--original-size"),  # 9
    (["sample", "RUN", "--seed", str(10**23)], "--seed"),  # 15
    (["evaluate", "RUN", "--ref", "REF", "--n", "0"], "--n"),  # 14
    (["evaluate", "RUN", "--ref", "REF", "--n", "-3"], "--n"),  # 14
])
def test_9_14_15_out_of_range_flags_are_one_line_naming_the_flag(tmp_path, capsys, argv, flag):
    from microcond.cli.main import main

    argv = [str(tmp_path / a) if a in ("RUN", "REF") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {flag}:" in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------ the flag fuzz

BAD_VALUES = ["abc", "nan", "-3", "1e400", "99999999999999999999"]
NEGATIVE_OK = {"--lognormal-mean"}  # a log-normal's mean may be any finite number
PLACEHOLDERS = {  # the other arguments each command needs; paths that do not exist
    "demo": [], "experiment": ["paper"], "train": ["--dry-run"], "export": ["RUN", "--diffusers", "OUT"],
    "sample": ["RUN"], "sweep": ["RUN", "--original-size", "8"], "evaluate": ["RUN", "--ref", "REF"],
    "probe": ["RUN", "--out", "OUT"], "demo-data": ["--out", "OUT"], "shard": ["RUN", "--out", "OUT"],
    "scan": ["RUN", "--out", "OUT"], "report": ["RUN", "--out", "OUT"],
}


def _numeric_flags():
    from microcond.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command, parser in sub.choices.items():
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.choices:
                continue
            kind = getattr(action.type, "__name__", "")
            if action.type in (int, float) or kind.startswith(("an ", "a ")) or action.dest in {"adam_betas", "seeds", "crops"}:
                yield command, action.option_strings[-1], action.nargs


def test_fuzz_every_numeric_flag_with_bad_values_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """Every numeric flag of every command, with a word, NaN, a negative, an overflow and a huge
    integer: exit 2 and one line naming the flag, never a traceback and never any work."""
    from microcond.cli.main import main
    from microcond.demodata import build as demodata
    from microcond.experiments import ablation, demo
    from microcond.experiments import paper as experiment

    def refuse(*args, **kwargs):
        raise ValueError("WORK STARTED")

    for module, name in ((demo, "run_demo"), (experiment, "run_paper"), (ablation, "run_ablation"), (demodata, "build_demo_data")):
        monkeypatch.setattr(module, name, refuse)
    cases, accepted = 0, []
    for command, flag, nargs in _numeric_flags():
        for value in BAD_VALUES:
            if value == "-3" and flag in NEGATIVE_OK:
                continue
            base = [str(tmp_path / a) if a in ("RUN", "REF", "OUT") else a for a in PLACEHOLDERS[command]]
            if flag in base:  # the fuzzed flag replaces the placeholder's own use of it
                base = base[:base.index(flag)] + base[base.index(flag) + 2:]
            values = [value] * (nargs if isinstance(nargs, int) else 1)
            code = main([command, *base, flag, *values])
            err = capsys.readouterr().err
            cases += 1
            assert "Traceback" not in err and err.count("\n") <= 1, (command, flag, value, err)
            named = flag in err or flag[2:].replace("-", "_") in err
            if code != 2 or not named or "WORK STARTED" in err:
                accepted.append((command, flag, value, code, err.strip()))
    print(f"flag fuzz: {cases} cases, {len(accepted)} accepted")
    assert cases > 300
    assert not accepted, "\n".join(map(str, accepted))


def test_fuzz_every_config_field_in_a_toml_file(tmp_path):
    """Each TrainConfig field in a TOML file with a wrong type, a huge number, a negative number
    and NaN: refused with a ValueError naming the field (the CLI prints it as one line, exit 2)."""
    import dataclasses
    import typing

    from microcond.train.config import TrainConfig, resolve

    hints = typing.get_type_hints(TrainConfig)
    cases, accepted = 0, []
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        numeric = kind in (int, float) or typing.get_args(kind)[:1] in ((int,), (float,))
        values = ['"abc"', "[[1]]", "99999999999999999999", "nan"] + (["-3"] if numeric and f.name not in ("lognormal_mean",) else [])
        if kind is str or typing.get_args(kind)[:1] == (str,):
            values = ["5", "[[1]]", "nan"]
        for value in values:
            path = tmp_path / f"{f.name}.toml"
            path.write_text(f"{f.name} = {value}\n")
            cases += 1
            try:
                resolve(toml_path=path)
            except ValueError as err:
                if f.name not in str(err) and f.name.replace("_", "-") not in str(err):
                    accepted.append((f.name, value, str(err)))
                continue
            accepted.append((f.name, value, "accepted"))
    print(f"config fuzz: {cases} cases, {len(accepted)} accepted")
    assert cases > 150
    assert not accepted, "\n".join(map(str, accepted))


@pytest.mark.parametrize("data, workers, expected", [
    ("pipe:cat shards/shard-000000.tar", 0, 1),  # one shard: one rank, whatever the cores
    ("shards/shard-{000000..000003}.tar", 2, 2),  # four shards, two loader workers per rank
    ("shards/shard-{000000..000003}.tar", 0, 4),
])
def test_16_the_default_layout_gives_every_rank_a_shard_and_says_why(monkeypatch, capsys, data, workers, expected):
    import argparse

    from microcond.cli.main import _cpu_layout
    from microcond.train import launch as runtime
    from microcond.train.config import resolve

    monkeypatch.setattr(runtime, "free_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = resolve(overrides={"data": data, "workers": workers})
    processes, threads = _cpu_layout(argparse.Namespace(argv=["train"], procs=0), cfg)
    assert (processes, threads) == (expected, 4 // expected)
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and f"train: {expected} data-parallel process" in line and "streamed shard" in line, line


def test_11_an_effective_size_above_the_files_is_refused_in_shards_and_indexes(tmp_path):
    from microcond.data.shards import index_shards
    from microcond.data.source import ImageSource

    shard = tar_with(tmp_path / "a.tar", {
        "big.png": png(30, 30), "big.json": b'{"effective_height": 100000, "effective_width": 100000}',
        "ok.png": png(30, 30), "ok.json": b'{"effective_height": 15, "effective_width": 15}'})
    source = index_shards([shard], size_source="effective")
    assert [n.rsplit(":", 1)[1] for n in source.names] == ["ok"] and source.told_size(0) == (15, 15)
    assert len(source.skipped) == 1 and "exceeds the original size (30, 30)" in source.skipped[0][1]
    stream = ShardStream([shard], ((32, 32),), 1, epochs=1, size_source="effective")
    assert [b["ids"][0, :2].tolist() for b in stream] == [[15, 15]] and stream.skips.count == 1
    rows = {"path": ["/a.png", "/b.png"], "height": [30, 30], "width": [30, 30], "bytes": [1, 1], "mtime_ns": [1, 1],
            "status": ["ok", "ok"], "reason": ["", ""], "effective_height": [100000, 10], "effective_width": [100000, 10]}
    indexed = ImageSource.from_rows(rows, None, {}, size_source="effective")
    assert indexed.names == ["/b.png"] and "exceeds the file's (30, 30)" in indexed.skipped[0][1]


def test_12_a_disk_that_fills_up_while_sharding_leaves_no_shard_and_a_rerun_works(tmp_path, monkeypatch):
    import errno

    import webdataset
    from test_loader import EVEN, make_source

    from microcond.data.shards import index_shards, write_shards

    source = make_source(tmp_path / "data", EVEN)
    real, calls = webdataset.TarWriter.write, []

    def fill_up(self, sample):
        calls.append(1)
        if len(calls) == 7:  # the third shard, part-way
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, sample)

    monkeypatch.setattr(webdataset.TarWriter, "write", fill_up)
    out = tmp_path / "shards"
    with pytest.raises(OSError, match=r"writing .*shard-000002\.tar failed \(No space left on device\); the 2 complete shard"):
        write_shards(source, out, max_count=3, progress=False)
    assert sorted(p.name for p in out.iterdir()) == []
    monkeypatch.setattr(webdataset.TarWriter, "write", real)
    written = write_shards(source, out, max_count=3, progress=False)  # the same command again
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in written]
    assert len(index_shards(written)) == len(source)


# ------------------------------------------------------------------- hostile JPEG headers


def _jpeg_declaring(width: int, height: int, progressive: bool) -> bytes:
    """A small real JPEG whose frame header (SOF0/SOF2) is patched to declare ``width`` x ``height``."""
    import io
    import struct

    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(out, format="JPEG", quality=80, progressive=progressive)
    data = bytearray(out.getvalue())
    at = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("progressive, words", [(True, "progressive JPEG of 13000x13000"), (False, "image data is missing")])
def test_3_4_a_small_jpeg_declaring_13000_px_is_refused_before_decoding(tmp_path, progressive, words):
    import resource

    from microcond.data.effective import estimate
    from microcond.data.index import effective_columns

    path = tmp_path / "huge.jpg"
    path.write_bytes(_jpeg_declaring(13000, 13000, progressive))
    assert path.stat().st_size < 4096
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=words):
        estimate(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: nothing large was decoded
    *measured, reason = effective_columns(str(path), 13000, 13000)  # what scan --effective stores
    assert measured[:3] == [None, None, None] and words in reason


@pytest.mark.parametrize("make", ["flat", "flat_jpeg", "line", "two_tone"])
def test_5_degenerate_images_measure_without_numpy_warnings(make):
    import io
    import warnings

    import numpy as np
    from PIL import Image

    from microcond.data.effective import estimate

    pixels = {"flat": np.full((200, 300, 3), 40, np.uint8), "flat_jpeg": np.full((200, 300, 3), 200, np.uint8),
              "line": np.zeros((1, 300, 3), np.uint8), "two_tone": np.repeat(np.array([[0], [255]], np.uint8), 100, axis=0)[:, :, None].repeat(300, 1).repeat(3, 2)}[make]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG" if make == "flat_jpeg" else "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before the fix: RuntimeWarning from numpy's divide
        e = estimate(out.getvalue())
    assert e.file_size == pixels.shape[:2] and 1 <= e.height <= pixels.shape[0] and 1 <= e.width <= pixels.shape[1]
    if make != "two_tone":  # nothing varies: native, with no confidence (two tones may read as an upscale)
        assert (e.height, e.width) == pixels.shape[:2] and e.confidence == 0.0


# ------------------------------------------------------------------------------ the soak test


@pytest.mark.parametrize("workers", [0, 2])
def test_soak_streamed_training_on_good_and_bad_shards_counts_every_skip(tmp_path, capsys, workers):
    """Streamed training over good shards and shards broken every way (cut, bad JSON, pixels that
    contradict their JSON, an empty file, a failing pipe): it trains, and data.json and the end
    line count what was left out."""
    from test_train import tiny_cfg

    from microcond.train.loop import train

    good = [tar_with(tmp_path / f"good{k}.tar", {f"g{k}{j}.png": png(40, 60) for j in range(6)}) for k in range(3)]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good[0].read_bytes()[:2500])
    bad_json = tar_with(tmp_path / "badjson.tar", {"b0.png": png(40, 60), "b0.json": b"{nope", "b1.png": png(40, 60)})
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    parts = [*map(str, good), str(cut), str(bad_json), str(_bad_aspect_shard(tmp_path / "aspect.tar")), str(empty), "pipe:false"]
    cfg = tiny_cfg(data="::".join(parts), resolution=32, buckets="32x48", batch_size=4, steps=12, checkpoint_every=12, shuffle_buffer=4, workers=workers)
    row = train(cfg, tmp_path / "run", progress=False)
    assert row["step"] == 12 and row["samples_skipped"] > 0
    report = json.loads((tmp_path / "run" / "data.json").read_text())["skipped_while_training"]
    assert report["count"] == row["samples_skipped"] and sum(report["kinds"].values()) == report["count"]
    reasons = " ".join(report["kinds"])
    for words in ("damaged tar", "empty file", "JSON is unreadable", "another aspect", "command 'false' exited with status N"):
        assert words in reasons, (words, reasons)


def test_13_a_forked_worker_of_the_command_dies_of_sigterm_as_by_default(tmp_path):
    """The command's SIGTERM handler unwinds the command itself; a process forked from it (a
    decoding pool's worker) must die as by default, or Pool.terminate waits on it for ever."""
    import subprocess
    import sys

    code = ("import os, signal, sys, time\nfrom microcond.cli.common import unwind_on_sigterm\n"
            "unwind_on_sigterm()\n"
            "child = os.fork()\n"
            "if child == 0:\n    os._exit(0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 3)\n"
            "_, status = os.waitpid(child, 0); print(os.WEXITSTATUS(status))\n"
            "child = os.fork()\n"
            "if child == 0:\n    time.sleep(30); os._exit(0)\n"
            "time.sleep(0.5); os.kill(child, signal.SIGTERM); _, status = os.waitpid(child, 0)\n"
            "print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    # The default disposition from the fork on: a Python handler would run only between bytecodes,
    # and a SIGTERM landing just before a worker blocks on its queue's lock would be lost.
    assert out.stdout.split() == ["0", "True"], (out.stdout, out.stderr)
