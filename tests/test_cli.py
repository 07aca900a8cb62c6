"""The command line: help with examples, one-line errors, the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from microcond.cli.main import build_parser, main


def test_every_subcommand_has_help_with_examples(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sub.choices, "no subcommands registered"
    for name in sub.choices:
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert "examples:" in out and f"microcond {name}" in out


def test_demo_smoke_run_writes_everything_and_reuses_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MICROCOND_CACHE", str(tmp_path / "cache"))
    flags = ["demo", "--out", str(tmp_path / "demo"), "--steps", "2", "--samples", "8", "--sampler-steps", "2", "--n-train", "120", "--n-eval", "30", "--feature-steps", "3", "--no-progress"]
    assert main(flags) == 0
    out = tmp_path / "demo"
    for name in ("samples-default.png", "samples-sharp.png", "sweeps/sweep-original_size-run.png", "sweeps/sweep-crop-run.png", "metrics.json",
                 "run/loss.png", "data-wide/preview.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "data-web").exists() and not (out / "run-size").exists()  # one model, one data set
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 2 and metrics["images_seen"] == 64 and metrics["n_samples"] == 8
    assert set(metrics["crop_effect"]["samples"]["cutoff"]) == set(metrics["crop_effect"]["real"]["cutoff"])
    assert 0 <= metrics["class_accuracy"]["samples"]["rate"] <= 1 and metrics["class_accuracy"]["held_out_real"]["n"] > 0
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["signals"] == ["original_size", "crop_top_left", "target_size"]
    stamp = (out / "samples-sharp.png").stat().st_mtime_ns
    capsys.readouterr()
    assert main(flags) == 0  # a second run reuses what is done
    assert (out / "samples-sharp.png").stat().st_mtime_ns == stamp
    printed = capsys.readouterr().out
    assert "demo done" in printed and "64 images trained" in printed
    assert main([*flags, "--guidance", "2", "--micro-guidance", "3"]) == 0  # other guidance: every picture and measure again
    assert (out / "samples-sharp.png").stat().st_mtime_ns != stamp
    assert json.loads((out / "metrics.json").read_text())["sampling"] == {"guidance": 2.0, "micro_guidance": 3.0}
    config = json.loads((out / "run" / "config.json").read_text())
    (out / "run" / "config.json").write_text(json.dumps({**config, "class_vector_std": 0.02}))  # a model of an older recipe
    capsys.readouterr()
    assert main(flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained with another recipe" in err[0] and "class_vector_std" in err[0] and "new --out" in err[0]


def test_console_script_bad_flag_is_one_clear_line():
    proc = subprocess.run([sys.executable, "-m", "microcond.cli", "demo", "--steps", "x"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid int value" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["sample", "RUN"], ["sweep", "RUN", "--original-size", "8", "16"], ["evaluate", "RUN", "--ref", "REF"]])
@pytest.mark.parametrize("guidance", ["nan", "inf", "-1"])
def test_guidance_must_be_finite_and_not_negative(tmp_path, capsys, command, guidance):
    # Refused before the run is even opened: the folder need not exist.
    args = [str(tmp_path / "missing") if a in ("RUN", "REF") else a for a in command]
    assert main([*args, "--guidance", guidance]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --guidance: expected a guidance scale from 0 to 1000" in err and guidance in err, err


@pytest.mark.parametrize("argv, flag", [(["demo", "--steps", "0"], "--steps 0"), (["demo", "--emoji-per-class", "-1"], "--emoji-per-class -1"),
                                        (["experiment", "paper", "--seeds", "0"], "--seeds 0")])
def test_demo_and_experiment_settings_below_one_are_one_line(argv, flag, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected positive integers" in err and flag in err


def test_a_failed_training_run_of_an_experiment_names_its_error(tmp_path):
    from microcond.experiments.launch import train_runs

    run = tmp_path / "run"
    command = ["microcond", "train", "--preset", "tiny", "--data", str(tmp_path / "missing"), "--out", str(run), "--steps", "2"]
    with pytest.raises(RuntimeError) as failed:
        train_runs({"run": command}, {"run": run}, {"run": 2}, parallel=1, progress=False)
    message = str(failed.value)
    assert "training run failed (exit 2): " in message and "missing" in message and str(run / "train.log") in message
