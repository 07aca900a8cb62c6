"""The command line: help with examples, one-line errors, the demo."""

from __future__ import annotations

import subprocess
import sys

import pytest

from microcond.cli import build_parser, main


def test_every_subcommand_has_help_with_examples(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sub.choices, "no subcommands registered"
    for name in sub.choices:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and f"microcond {name}" in out


def test_demo_runs_and_reports_agreement_with_diffusers(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "diffusers' own path" in l)
    assert float(line.rsplit(":", 1)[1]) < 1e-5


def test_console_script_bad_flag_is_one_clear_line():
    proc = subprocess.run([sys.executable, "-m", "microcond.cli", "demo", "--seed", "x"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid int value" in proc.stderr and "Traceback" not in proc.stderr
