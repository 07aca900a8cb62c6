"""``microcond probe`` on a tiny random SDXL folder, and its measures on a stand-in model whose
answers are known: blur from a small c_size, an object that moves with c_crop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_detail import discs
from test_sdxl import write_tiny_sdxl

from microcond.cli.main import main
from microcond.probe import sweeps as probe
from microcond.probe.page import reading
from microcond.sample.grid import GRID_CELL_PX, PAD

# model_index.json as a stock SDXL base checkpoint has it (without the optional image encoder parts).
STOCK_INDEX = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0.dev0", "force_zeros_for_empty_prompt": True,
               "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
               "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
               "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
PROMPTS = ["a red cube on a table", "a blue ball on the floor"]
SMALL = ["--resolution", "32", "--steps", "2", "--seeds", "0", "1", "--sizes", "0.25", "1", "2",
         "--crops", "0,0", "0,0.25", "0.25,0", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = write_tiny_sdxl(tmp_path_factory.mktemp("sdxl"))
    (folder / "model_index.json").write_text(json.dumps(STOCK_INDEX))
    return folder


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS[:1] + ["", *PROMPTS[1:]]) + "\n")  # a blank line is skipped
    return path


@pytest.fixture(scope="module")
def report(folder, prompts, tmp_path_factory) -> Path:
    """A probe with 4 rows (2 prompts x 2 seeds) in batches of 3: one full batch and one partial."""
    out = tmp_path_factory.mktemp("probe")
    assert main(["probe", str(folder), "--out", str(out), "--prompts", str(prompts), "--batch-size", "3", *SMALL]) == 0
    return out


def numbers(value) -> list:
    """Every number in a JSON value."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_probe_writes_its_report(report, folder):
    assert {p.name for p in report.iterdir()} == {"probe.md", "probe.json", "size-sweep.png", "crop-sweep.png"}
    results = json.loads((report / "probe.json").read_text())
    assert results["model"] == str(folder.resolve()) and results["prompts"] == PROMPTS
    assert [(r["prompt"], r["seed"]) for r in results["rows"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    size, crop = results["size_sweep"], results["crop_sweep"]
    assert [c["original_size"] for c in size["curve"]] == [[8, 8], [32, 32], [64, 64]]
    assert [q["crop_top_left"] for q in crop["queries"]] == [[0, 0], [0, 8], [8, 0]]
    assert -1 <= size["spearman"] <= 1 and -1 <= size["spearman_of_means"] <= 1
    assert -1 <= size["spearman_within_rows"]["low"] <= size["spearman_within_rows"]["mean"] <= size["spearman_within_rows"]["high"] <= 1
    for c in size["curve"]:
        assert c["laplacian_variance"]["n"] == 4 and c["laplacian_variance"]["low"] <= c["laplacian_variance"]["mean"] <= c["laplacian_variance"]["high"]
    for q in crop["queries"]:
        assert q["cut_off"]["n"] == 4 and 0 <= q["cut_off"]["low"] <= q["cut_off"]["rate"] <= q["cut_off"]["high"] <= 1
        assert set(q["touches"]) == {"top", "left", "bottom", "right"}
    assert np.array(size["per_image"]["laplacian_variance"]).shape == (4, 3)
    assert np.array(crop["per_image"]["cut_off"]).shape == (4, 3)
    assert crop["queries"][0]["shift"]["x"]["mean"] == 0  # each image against itself
    timing = results["timing"]
    assert timing["images"] == 24 and timing["images_per_s"] > 0 and timing["total_s"] >= timing["sampling_s"] > 0
    assert all(math.isfinite(n) for n in numbers(results))  # NaN is written as null, never as a bare NaN


def test_grids_have_a_cell_per_row_and_value(report):
    cell = GRID_CELL_PX  # 32 px images are upscaled 4x
    for name in ("size-sweep.png", "crop-sweep.png"):
        with Image.open(report / name) as grid:
            width, height = grid.size
        # Labels take less than one cell on the left and on top; cells are cell + PAD apart.
        assert 0 <= width - PAD - 3 * (cell + PAD) < cell, (name, width)
        assert 0 <= height - PAD - 4 * (cell + PAD) < cell, (name, height)


def test_the_page_links_the_grids_and_states_the_numbers(report):
    page = (report / "probe.md").read_text()
    results = json.loads((report / "probe.json").read_text())
    assert "![c_size sweep](size-sweep.png)" in page and "![c_crop sweep](crop-sweep.png)" in page
    assert f"Spearman {results['size_sweep']['spearman']:+.2f} over all 12 images" in page
    assert "| 8x8 |" in page and "| (0, 8) |" in page and f"P2: {PROMPTS[1]}" in page


def test_an_image_depends_on_its_row_not_on_its_batch(report, folder, prompts, tmp_path):
    assert main(["probe", str(folder), "--out", str(tmp_path), "--prompts", str(prompts), "--batch-size", "1", *SMALL]) == 0
    batched, alone = (json.loads((d / "probe.json").read_text()) for d in (report, tmp_path))
    for sweep, key in (("size_sweep", "laplacian_variance"), ("crop_sweep", "centre_x")):
        np.testing.assert_allclose(alone[sweep]["per_image"][key], batched[sweep]["per_image"][key], rtol=1e-4)


def test_dry_run_resolves_the_defaults_from_the_model(folder, tmp_path, capsys):
    assert main(["probe", str(folder), "--out", str(tmp_path), "--dry-run", "--device", "cpu"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["resolution"] == 64  # UNet sample_size 8 x the VAE's factor 8
    assert settings["dtype"] == "fp32" and settings["steps"] == 30 and settings["guidance"] == 5.0
    assert settings["sizes"] == list(probe.SIZE_FACTORS) and not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}"], "must be a diffusers SDXL pipeline folder on disk"),
    (["--out", "{tmp}", "--n-prompts", "9"], "--n-prompts 9 but the built-in list holds 8 prompts"),
    (["--out", "{tmp}", "--resolution", "40"], "--resolution must be a multiple of 16"),
    (["--out", "{tmp}", "--crops", "0,-0.25"], "argument --crops: expected TOP,LEFT as two fractions of the resolution in [0, 1)"),
])
def test_user_mistakes_are_one_line(folder, tmp_path, capsys, args, message):
    model = str(tmp_path / "missing") if "must be a diffusers" in message else str(folder)
    assert main(["probe", model, *[a.format(tmp=tmp_path / "out") for a in args], "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("microcond probe: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("unet, message", [
    ({"addition_embed_type": None}, "micro-conditions need an SDXL-architecture UNet"),
    ({"addition_embed_type": "text_time", "projection_class_embeddings_input_dim": 32 + 5 * 256}, "the refiner's five are not probed"),
])
def test_a_unet_without_six_micro_conditions_is_refused(tmp_path, capsys, unet, message):
    """Refused from the configs alone: a UNet without micro-conditions, and one with the refiner's five ids."""
    configs = {"unet": {"sample_size": 8, "block_out_channels": [32, 64], "addition_time_embed_dim": 256, **unet},
               "vae": {"block_out_channels": [16, 16, 16, 16]}, "text_encoder_2": {"projection_dim": 32}}
    for part, config in configs.items():
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text(json.dumps(config))
    (tmp_path / "model_index.json").write_text(json.dumps(STOCK_INDEX))
    assert main(["probe", str(tmp_path), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------- a stand-in model with known answers


def known_effects(pipe, rows, micro, settings) -> torch.Tensor:
    """Stands in for ``probe.draw``: a disc that moves up and left by the requested crop (2 px
    more per seed), drawn at min(c_size, resolution) px and upscaled, so smaller c_size is blurrier."""
    r = settings.resolution
    (top, left), side = micro.crop_top_left, min(micro.original_size[0], r)
    images = discs([(r / 2 - top + 2 * seed, r / 2 - left + 2 * seed) for _, seed in rows], radius=r / 6, size=r)
    return F.interpolate(F.interpolate(images, size=side, mode="area"), size=r, mode="bilinear", align_corners=False)


def test_the_measures_recover_a_known_size_and_crop_effect(monkeypatch, tmp_path):
    monkeypatch.setattr(probe, "load_pipeline", lambda settings: None)
    monkeypatch.setattr(probe, "draw", known_effects)
    settings = probe.ProbeSettings(model="", out=str(tmp_path), resolution=64, seeds=(0, 1, 2), n_prompts=2, sizes=(0.125, 0.25, 0.5, 1.0),
                                   crops=((0, 0), (0, 0.125), (0, 0.25), (0, 0.5), (0.25, 0)), device="cpu", dtype="fp32")
    monkeypatch.setattr(probe, "resolve", lambda s: s)  # no model folder behind the stand-in
    results = probe.run_probe(settings, progress=False)
    size, crop = results["size_sweep"], results["crop_sweep"]
    # Every row sharpens with c_size; across rows the disc's position against the pixel grid varies the blur a little.
    assert size["spearman_within_rows"]["mean"] == pytest.approx(1.0) and size["spearman_of_means"] == pytest.approx(1.0)
    assert size["spearman"] > 0.95
    assert size["ratio_largest_to_smallest"] > 5
    # The disc moves by -1 px per px of crop, and the centre with it while the disc is whole.
    whole = crop["queries"][:3]
    assert [q["shift"]["x"]["mean"] for q in whole] == pytest.approx([0, -8, -16], abs=0.01)
    assert crop["queries"][4]["shift"]["y"]["mean"] == pytest.approx(-16, abs=0.01)
    assert [q["cut_off"]["rate"] for q in crop["queries"]] == [0, 0, 0, 1, 0]
    assert crop["queries"][3]["touches"] == {"top": 0, "left": 1, "bottom": 0, "right": 0}
    # Over all c_left queries the slope is shallower than -1: at (0, 32) the disc is cut and its visible part moves less.
    assert crop["queries"][3]["shift"]["x"]["mean"] > -32
    assert -1 < crop["slope_x_per_crop_left"]["slope"] < -0.5 and crop["slope_x_per_crop_left"]["high"] < 0
    assert crop["slope_y_per_crop_top"]["slope"] == pytest.approx(-1, abs=0.01)
    page = (tmp_path / "probe.md").read_text()
    assert "Sharpness rises with the requested original size" in page
    assert "As c_left grows, the object centre x moves as a crop from the left would" in page
    assert "As c_top grows, the object centre y moves as a crop from the top would" in page
    assert "at c_crop (0, 0), 100% [61, 100] at (0, 32) (+100 points)" in page
    results["size_sweep"]["ratio_largest_to_smallest"] = 1.03  # a consistent rise too small to see
    assert reading(results)[0].startswith("- Sharpness hardly depends on the requested original size")
    results["crop_sweep"]["slope_x_per_crop_left"] = {"slope": None, "low": None, "high": None, "n": 2}
    assert "Object centre x against c_left: not measured (only 2 images with an object)." in reading(results)[1]
