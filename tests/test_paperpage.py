"""The results page: tables, statements and results.json rows from the measurements."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microcond.experiments.paperpage import reading, rows, write_results

QUERIES = ["square original, crop (0, 0)", "wide original, centre crop (0, 16)", "wide original, crop (0, 0)"]
SIZES = [8, 16, 32, 128]


def _rate(r: float) -> dict:
    return {"rate": r, "low": max(0.0, r - 0.05), "high": min(1.0, r + 0.05), "n": 200}


def _position(s: float) -> dict:
    return {"centre_x": {str(v): 16 + s * (v - 16) for v in (0, 8, 16, 24, 32)}, "slope": s, "low": s - 0.05, "high": s + 0.05, "n": 1000}


def _table(fd: float, accuracy: float) -> dict:
    return {"frechet_distance": fd, "kid": 0.3, "kid_std": 0.01, "swd_x1e3": 400.0, "sharpness_ratio": 0.5, "cutoff_rate": 0.1,
            "class_accuracy": accuracy, "class_accuracy_low": accuracy - 0.05, "class_accuracy_high": accuracy + 0.05, "held_out_accuracy": 0.8,
            "class_accuracy_ratio": accuracy / 0.8}


def _results() -> dict:
    real = {"cutoff": dict(zip(QUERIES, map(_rate, (0.0, 0.3, 0.94)))), "position": _position(-0.72),
            "curve": {str(s): 0.001 * s for s in SIZES}, "floor": {"noise_std": 0.05, **_rate(0.01)}, "reference_eval_sharpness": 0.2}
    runs = {}
    models = {"drop-small": (8.0, []), "no-cond": (7.0, []), "size": (5.0, ["original_size"]), "size-crop": (4.0, ["original_size", "crop_top_left", "target_size"])}
    for name, (fd, signals) in models.items():
        for seed in (0, 1):
            cut = (0.02, 0.33, 0.9) if name == "size-crop" else (0.2, 0.2, 0.2)
            entry = {"model": name, "seed": seed, "step": 100, "images_seen": 3200, "signals": signals, "table": _table(fd + 0.1 * seed, 0.6 if name == "size-crop" else 0.4),
                     "crop": {"cutoff": dict(zip(QUERIES, map(_rate, cut))), "position": _position(-0.65 if name == "size-crop" else 0.0)}}
            entry["curve"] = {str(s): 0.0005 * s for s in SIZES} if signals else {"any": 0.05}
            runs[f"{name}-s{seed}"] = entry
    recipe = {"prediction_type": "v_prediction", "timestep_sampling": "lognormal", "lognormal_mean": -1.2, "lognormal_std": 1.2, "loss_weighting": "edm",
              "sigma_data": 0.5, "min_snr_gamma": 5.0, "zero_init_conditioning": False, "lr": 1e-3, "ema_decay": 0.999, "cond_dropout": 0.1, "class_dropout": 0.1}
    return {"budget": {"steps": 100, "seeds": 2, "table_samples": 10, "crop_samples": 10, "curve_samples": 10, "sampler_steps": 5, "feature_steps": 5},
            "real": real, "runs": runs, "recipe": recipe, "minutes": 12.0, "training_minutes": 9.0}


def test_reading_states_each_goal_from_the_numbers() -> None:
    text = "\n".join(reading(_results()))
    assert "size-crop (4.050) < size (5.050) < no-cond (7.050) < drop-small (8.050)" in text and "ranks first, as in the paper: yes" in text
    assert "size-crop 4.05 against no-cond 7.05, a gap of 3, larger than the seed spread (0.1" in text
    assert "size-crop seed 0" in text and "largest gap to the real data 4 points (goal <= 10: met)" in text
    assert "raises the cut-off rate by +57 points" in text and "goal >= 30: met" in text and "goal within 0.1: met" in text
    assert "Fig. 3, size seed 0" in text and "Spearman 1.00" in text and "(goal >= 5x and >= 0.9: met)" in text
    assert "Class accuracy of size-crop's samples: seed 0 60% (0.75 of the classifier's 80% on held-out real images)" in text and "goal >= 0.70 of it: met" in text
    assert "no-cond seed 1: blind to the crop, it answers the queries with 20% cut off" in text


def test_page_and_json_hold_the_same_numbers(tmp_path: Path) -> None:
    results = _results()
    curve = tmp_path / "curve.png"
    curve.write_bytes(b"")
    page = write_results(results, {"size": ("all images, size conditioning", ["microcond", "train"])}, {"curve": curve}, tmp_path, "microcond experiment paper")
    text = page.read_text()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["rows"] == rows(results)
    fd = [r for r in data["rows"] if r["metric"] == "frechet_distance"]
    assert len(fd) == 8 and all(f"{r['value']:.3f}" in text for r in fd)
    accuracy = [r for r in data["rows"] if r["metric"] == "class_accuracy"]
    assert len(accuracy) == 8 and "| size-crop | 4.000 / 4.100 | 0.3000 / 0.3000 | 400.0 / 400.0 | 60% (0.75) / 60% (0.75) |" in text
    slopes = [r for r in data["rows"] if r["metric"] == "centre_x_slope"]
    assert {r["model"] for r in slopes} == {"real", "drop-small", "no-cond", "size", "size-crop"}
    assert "v-prediction, log sigma ~ N(-1.2, 1.2^2) noise levels (EDM), EDM's loss weight" in text and "100 steps of batch 32 (3,200 images per model)" in text
    assert "| real data | 27.5 | 21.8 | 16.0 | 10.2 | 4.5 | -0.72 [-0.77, -0.67] |" in text


def test_ablation_table_holds_both_effects_fidelity_and_recognisability() -> None:
    from microcond.experiments.paperpage import ablation_table

    results = _results()
    entry = results["runs"]["size-crop-s0"]
    row = {"setting": "EDM", "aspect_mix": "wide", "guidance": 1.0, "step": 100, "images_seen": 3200, "cond_units_live": 40, "table": entry["table"],
           **entry["crop"], "sharpness": {"8": 0.01, "128": 0.06}}
    weaker = {**row, "setting": "weaker", "sharpness": {"8": 0.02, "128": 0.06}, "images_seen": 6400}
    lines = ablation_table({"real": {"wide": {"cutoff": results["real"]["cutoff"], "position": results["real"]["position"]}},
                            "rows": {"edm": row, "weaker": weaker}})
    table = [line for line in lines if line.startswith("|")]
    assert table[-2] == "| EDM | -0.65 [-0.70, -0.60] | 2% [0, 7] | 33% [28, 38] | 90% [85, 95] | 6.0x | 4.00 | 60% (0.75) | 40 of 128 | 3,200 |"
    assert len({line.count("|") for line in table}) == 1  # every row has every column
    assert "- Fig. 3 sharpness c_size 128 / 8 (goal >= 5x): 6.0x by edm (3,200 images)." in lines


def test_further_experiments_are_included_with_their_pictures(tmp_path):
    from microcond.experiments.paperpage import further_experiments

    (tmp_path / "upscaled").mkdir()
    (tmp_path / "upscaled" / "upscaled.md").write_text("# Title\n\nA table.\n\n## Part\n\n![curve](upscaled-curve.png)\n")
    text = "\n".join(further_experiments(tmp_path))
    assert text.startswith("## Upscaled files") and "# Title" not in text
    assert "### Part" in text and "![curve](upscaled/upscaled-curve.png)" in text
    assert "Micro-condition guidance" not in text  # no page, no section


def test_a_page_of_runs_made_with_an_older_recipe_says_so():
    from dataclasses import asdict

    from microcond.experiments.recipe import RECIPE_FIELDS, recipe_changes
    from microcond.train.config import resolve

    now = {k: v for k, v in asdict(resolve("tiny")).items() if k in RECIPE_FIELDS}
    assert recipe_changes(now) == {} and recipe_changes({}) == {}
    older = {k: v for k, v in now.items() if k not in ("class_vector_std", "time_embed_dim")}  # recorded before those fields existed
    assert recipe_changes(older) == {"class_vector_std": (0.02, now["class_vector_std"]), "time_embed_dim": (0, now["time_embed_dim"])}


def test_the_paper_measures_at_the_budgets_guidance_and_says_so():
    from microcond.experiments.paper import Budget
    from microcond.experiments.recipe import sampled_with

    budget = Budget(guidance=4, micro_guidance=4)
    conditioned, plain = ("original_size",), ()  # what each model sees
    assert budget.sampling(conditioned) == {"guidance": 4.0, "micro_guidance": 4.0}
    assert budget.sampling(plain) == {"guidance": 4.0, "micro_guidance": None}  # nothing to guide: no third pass
    assert Budget(micro_guidance=0).sampling(conditioned)["micro_guidance"] is None
    for bad in (dict(guidance=-1), dict(micro_guidance=float("nan"))):
        with pytest.raises(ValueError, match="--(micro-)?guidance must be a finite number >= 0"):
            Budget(**bad)
    assert sampled_with({}) == "no guidance"  # a budget recorded before guidance was measured
    assert "class guidance 4 and micro-condition guidance 4" in sampled_with({"guidance": 4.0, "micro_guidance": 4.0})
    assert sampled_with({"guidance": 3.0, "micro_guidance": 0.0}) == "class guidance 3"
