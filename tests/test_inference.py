"""sample / sweep / evaluate on a trained run, through the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from microcond.cli.main import main
from microcond.cond.record import MicroCond
from microcond.sample.run import Query


@pytest.fixture(scope="module")
def run(tmp_path_factory, image_folder):
    out = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.setenv("MICROCOND_CACHE", str(out / "cache"))
    flags = ["--preset", "tiny", "--resolution", "16", "--batch-size", "4", "--precision", "fp32", "--sample-every", "0", "--num-classes", "2", "--steps", "2", "--no-progress"]
    assert main(["train", "--data", str(image_folder), "--out", str(out / "run"), *flags]) == 0
    yield out / "run"
    mp.undo()


def test_sample_writes_grid_and_files_and_is_batch_independent(run, tmp_path):
    assert main(["sample", str(run), "--n", "4", "--steps", "4", "--class", "1", "--out", str(tmp_path / "a")]) == 0
    assert main(["sample", str(run), "--n", "1", "--seed", "2", "--steps", "4", "--class", "1", "--out", str(tmp_path / "b")]) == 0
    files = sorted(p.name for p in (tmp_path / "a").glob("seed-*.png"))
    assert files == [f"seed-{i:06d}.png" for i in range(4)]
    assert (tmp_path / "a" / "grid.png").exists()
    alone = np.asarray(Image.open(tmp_path / "b" / "seed-000002.png"), dtype=int)
    inside = np.asarray(Image.open(tmp_path / "a" / "seed-000002.png"), dtype=int)
    assert alone.shape == (16, 16, 3) and np.abs(alone - inside).max() <= 1  # same seed, same image


def test_sample_rejects_unknown_class_and_wrong_target(run, capsys):
    assert main(["sample", str(run), "--class", "5", "--steps", "2"]) == 2
    assert "--class 5" in capsys.readouterr().err
    assert main(["sample", str(run), "--target-size", "32", "32", "--steps", "2"]) == 2
    assert "resolution" in capsys.readouterr().err


def test_negative_crop_alone_is_honoured():
    # diffusers drops a negative crop unless both negative sizes are given; here it counts.
    query = Query(original_size=(64, 128), crop_top_left=(0, 16), negative_crop_top_left=(0, 0))
    assert query.negative(32) == MicroCond((64, 128), (0, 0), (32, 32))
    assert Query().negative(32) is None


def test_sweep_grid_has_one_row_per_seed(run, tmp_path):
    out = tmp_path / "fig3.png"
    assert main(["sweep", str(run), "--original-size", "8", "16", "64", "--seeds", "0", "1", "--steps", "3", "--out", str(out)]) == 0
    wide = tmp_path / "fig4.png"
    assert main(["sweep", str(run), "--crop", "0,0", "0,8", "--original-size-fixed", "16", "32", "--seeds", "0", "--steps", "3", "--out", str(wide)]) == 0
    a, b = Image.open(out), Image.open(wide)
    assert a.width > b.width and a.height > b.height  # 3 columns x 2 rows against 2 x 1


def test_evaluate_writes_labelled_metrics(run, image_folder, tmp_path):
    out = tmp_path / "m.json"
    assert main(["evaluate", str(run), "--ref", str(image_folder), "--n", "8", "--steps", "3", "--feature-steps", "5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "not Inception" in report["note"] or "in-domain" in report["note"].lower()
    assert report["n_samples"] == 8 and report["n_refs"] == 24
    assert {"sharpness", "cutoff_rate", "fidelity"} <= set(report)


def test_run_draws_and_exports_a_unet_diffusers_loads(run, tmp_path):
    from diffusers import UNet2DConditionModel

    from microcond.sample.run import Run

    from microcond.model import center_bias

    loaded = Run(run)
    images = loaded.draw(Query(original_size=(8, 8)), [0, 1], steps=2, progress=False)
    assert images.shape == (2, *loaded.shape) and images.abs().max() <= 1
    again = loaded.draw(Query(original_size=(8, 8)), [1], steps=2, progress=False)
    assert torch.allclose(again[0], images[1], atol=1e-4) and (images[0] - images[1]).abs().max() > 0.01  # a seed's pixels, batched or not
    out = loaded.export(tmp_path / "unet")
    exported = UNet2DConditionModel.from_pretrained(out).state_dict()
    ours = center_bias(loaded.model.unet.state_dict(), loaded.model.micro_center, loaded.model.pooled_dim, prefix="")
    assert exported.keys() == ours.keys() and all(torch.equal(exported[k], ours[k]) for k in ours)  # the EMA weights, centre folded


def test_micro_guidance_study_writes_its_table_curve_and_grids(run, tmp_path):
    import json

    from microcond.experiments.micro_guidance import run_study

    results = run_study(run, tmp_path / "mg", scales=(None, 3.0), sizes=(8, 64), n=2, steps=2, progress=False)
    assert [row["micro_guidance"] for row in results["rows"]] == ["off", "3"]
    assert results["rows"][0]["colour_shift_vs_off"] == 0 and results["rows"][1]["colour_shift_vs_off"] > 0  # the scale acts
    assert all(-1 <= row["spearman"] <= 1 and row["ratio_largest_to_smallest"] > 0 for row in results["rows"])
    assert json.loads((tmp_path / "mg" / "micro-guidance.json").read_text())["sizes"] == [8, 64]
    page = (tmp_path / "mg" / "micro-guidance.md").read_text()
    assert "| 3 |" in page and all((tmp_path / "mg" / name).stat().st_size > 0 for name in
                                   ("micro-guidance-curve.png", "grid-micro-off.png", "grid-micro-3.png"))
