"""scripts/gpu-check.sh's body runs end to end without a GPU (``--allow-cpu``), so it works when a
GPU machine is at hand; without that flag and without a GPU it stops with one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_trains_resumes_exports_and_probes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MICROCOND_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MICROCOND_NO_REEXEC", "1")  # what the script sets for itself, undone after the test
    gpu_check = load()
    if not torch.cuda.is_available():
        assert gpu_check.main_check(["--out", str(tmp_path / "refused")]) == 1
        assert "no CUDA GPU visible" in capsys.readouterr().err
    assert gpu_check.main_check(["--allow-cpu", "--sizes", "tiny", "--modes", "lora", "--steps", "2", "--batch", "2", "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert [c["case"] for c in results["cases"]] == ["tiny-lora-plain", "tiny-lora-ckpt"]
    assert all(c["images_per_s"] > 0 and c["plan_gib"] > 0 for c in results["cases"])
    assert results["checks"] == {"tiny-lora-ckpt resumed to step": 7, "tiny-lora-ckpt exported and probed": True}
    assert (tmp_path / "out" / "probe-tiny-lora-ckpt" / "probe.json").is_file()
