"""The results page: tables, statements and results.json rows from the measurements."""

from __future__ import annotations

import json
from pathlib import Path

from microcond.paperpage import reading, rows, write_results

QUERIES = ["square original, crop (0, 0)", "wide original, centre crop (0, 16)", "wide original, crop (0, 0)"]
SIZES = [8, 16, 32, 128]


def _rate(r: float) -> dict:
    return {"rate": r, "low": max(0.0, r - 0.05), "high": min(1.0, r + 0.05), "n": 200}


def _position(s: float) -> dict:
    return {"centre_x": {str(v): 16 + s * (v - 16) for v in (0, 8, 16, 24, 32)}, "slope": s, "low": s - 0.05, "high": s + 0.05, "n": 1000}


def _results() -> dict:
    real = {"cutoff": dict(zip(QUERIES, map(_rate, (0.0, 0.3, 0.94)))), "position": _position(-0.72),
            "curve": {str(s): 0.001 * s for s in SIZES}, "floor": {"noise_std": 0.05, **_rate(0.01)}, "reference_eval_sharpness": 0.2}
    runs = {}
    for name, fd in (("drop-small", 8.0), ("no-cond", 7.0), ("size", 5.0)):  # the size recipe: Table 2 and Fig. 3
        for seed in (0, 1):
            entry = {"model": name, "seed": seed, "step": 100, "recipe": "size", "table": {"frechet_distance": fd + 0.1 * seed, "kid": 0.3, "kid_std": 0.01, "swd_x1e3": 400.0, "sharpness_ratio": 0.5, "cutoff_rate": 0.1}}
            entry["curve"] = {str(s): 0.0005 * s for s in SIZES} if name == "size" else {"any": 0.05}
            runs[f"{name}-s{seed}"] = entry
    for name in ("no-cond-v", "size-crop-v"):  # the crop recipe: Fig. 4 and Fig. 5
        for seed in (0, 1):
            cut = (0.02, 0.33, 0.9) if name == "size-crop-v" else (0.2, 0.2, 0.2)
            entry = {"model": name, "seed": seed, "step": 100, "recipe": "crop",
                     "crop": {"cutoff": dict(zip(QUERIES, map(_rate, cut))), "position": _position(-0.6 if name == "size-crop-v" else 0.0)}}
            if name == "size-crop-v":
                entry["curve"] = {str(s): 0.05 for s in SIZES}
            runs[f"{name}-s{seed}"] = entry
    return {"budget": {"steps": 100, "crop_steps": 80, "seeds": 2, "table_samples": 10, "crop_samples": 10, "curve_samples": 10, "sampler_steps": 5, "feature_steps": 5},
            "real": real, "runs": runs, "minutes": 12.0, "training_minutes": 9.0}


def test_reading_states_each_goal_from_the_numbers() -> None:
    text = "\n".join(reading(_results()))
    assert "size (5.050) < no-cond (7.050) < drop-small (8.050)" in text and "is reproduced" in text
    assert "a gap of 2, larger than the seed spread (0.1" in text
    assert "size-crop-v seed 0" in text and "largest gap to the real data 4 points (goal <= 10: met)" in text
    assert "raises the cut-off rate by +57 points" in text and "goal >= 30: met" in text
    assert "Fig. 3, size seed 0" in text and "Spearman 1.00" in text and "(goal >= 0.9 and >= 5x: met)" in text
    assert "Fig. 3, size-crop-v seed 0" in text and "the crop recipe's price" in text
    assert "no-cond-v seed 1: it cannot see the query" in text


def test_page_and_json_hold_the_same_numbers(tmp_path: Path) -> None:
    results = _results()
    curve = tmp_path / "curve.png"
    curve.write_bytes(b"")
    page = write_results(results, {"size": ("all images, size conditioning", ["microcond", "train"])}, {"curve": curve}, tmp_path, "microcond experiment paper")
    text = page.read_text()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["rows"] == rows(results)
    fd = [r for r in data["rows"] if r["metric"] == "frechet_distance"]
    assert len(fd) == 6 and all(f"{r['value']:.3f}" in text for r in fd)
    slopes = [r for r in data["rows"] if r["metric"] == "centre_x_slope"]
    assert {r["model"] for r in slopes} == {"real", "no-cond-v", "size-crop-v"}
    assert "| no-cond-v | size-crop-v |" in text and "80 steps" in text
    assert "| real data | 27.5 | 21.8 | 16.0 | 10.2 | 4.5 | -0.72 [-0.77, -0.67] |" in text


def test_further_experiments_are_included_with_their_pictures(tmp_path):
    from microcond.paperpage import further_experiments

    (tmp_path / "upscaled").mkdir()
    (tmp_path / "upscaled" / "upscaled.md").write_text("# Title\n\nA table.\n\n## Part\n\n![curve](upscaled-curve.png)\n")
    text = "\n".join(further_experiments(tmp_path))
    assert text.startswith("## Upscaled files") and "# Title" not in text
    assert "### Part" in text and "![curve](upscaled/upscaled-curve.png)" in text
    assert "Micro-condition guidance" not in text  # no page, no section
