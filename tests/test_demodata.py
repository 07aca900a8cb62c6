"""The demo data set: determinism, boxes and margins, labels against the glyphs, size distribution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from microcond.cli.main import main
from microcond.demodata.build import (
    PALETTE,
    SKIN_TONES,
    DemoDataConfig,
    build_demo_data,
    find_emoji_test,
    find_font,
    load_catalogue,
    original_short_edge,
    render_glyph,
    split_emoji,
)

FONT = str(find_font())  # scripts/setup.sh installs fonts-noto-color-emoji and unicode-data
CATALOGUE = load_catalogue(find_emoji_test())
BY_NAME = {e.name: e for e in CATALOGUE}


def _records(root: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / split / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


def _pixels(root: Path, split: str, record: dict) -> np.ndarray:
    with Image.open(root / split / record["file"]) as im:
        assert im.mode == "RGB" and im.format == record["format"]
        return np.asarray(im, dtype=np.int16)  # (h, w, 3)


def _glyph_on(name: str, background: list[int], size: tuple[int, int] | None = None) -> np.ndarray:
    """The named emoji composited on a background, optionally area-resized to (w, h)."""
    glyph = render_glyph(FONT, BY_NAME[name].text)
    image = Image.new("RGB", glyph.size, tuple(background))
    image.paste(glyph.convert("RGB"), (0, 0), glyph.getchannel("A"))
    if size is not None:
        image = image.resize(size, Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float64)


@pytest.fixture(scope="module")
def moderate(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    build_demo_data(DemoDataConfig(out=str(root), n_train=400, n_eval=60, jobs=2), progress=False)
    return root


def test_catalogue_keeps_one_of_each_skin_tone_variant_and_nine_groups():
    groups = {e.group for e in CATALOGUE}
    assert len(groups) == 9 and "Component" not in groups
    assert all(SKIN_TONES.isdisjoint(map(ord, e.text)) for e in CATALOGUE)
    assert 1700 < len(CATALOGUE) < 2200
    assert BY_NAME["grinning face"].group == "Smileys & Emotion"
    assert BY_NAME["grinning face"].subgroup == "face-smiling"
    assert sum(e.name.startswith("waving hand") for e in CATALOGUE) == 1  # 6 variants in the file


def test_catalogue_parses_a_small_file(tmp_path):
    text = "\n".join([
        "# group: Smileys & Emotion", "# subgroup: face-smiling",
        "1F600 ; fully-qualified # 😀 E1.0 grinning face",
        "263A ; unqualified # ☺ E0.6 smiling face",
        "# group: People & Body", "# subgroup: hand-fingers-open",
        "1F44B ; fully-qualified # 👋 E0.6 waving hand",
        "1F44B 1F3FB ; fully-qualified # 👋🏻 E1.0 waving hand: light skin tone",
        "# group: Component", "# subgroup: skin-tone",
        "1F3FB ; component # 🏻 E1.0 light skin tone",
    ])
    path = tmp_path / "emoji-test.txt"
    path.write_text(text, encoding="utf-8")
    emoji = load_catalogue(path)
    assert [(e.name, e.group, e.subgroup, e.codepoints) for e in emoji] == [
        ("grinning face", "Smileys & Emotion", "face-smiling", "1F600"),
        ("waving hand", "People & Body", "hand-fingers-open", "1F44B"),
    ]
    path.write_text("not an emoji file\n", encoding="utf-8")
    with pytest.raises(ValueError, match="emoji-test.txt format"):
        load_catalogue(path)


def test_split_is_disjoint_stratified_and_seeded():
    train, held_out = split_emoji(CATALOGUE, seed=0, eval_share=0.15)
    assert {e.name for e in train}.isdisjoint(e.name for e in held_out)
    assert len(train) + len(held_out) == len(CATALOGUE)
    for group in {e.group for e in CATALOGUE}:
        n = sum(e.group == group for e in CATALOGUE)
        n_eval = sum(e.group == group for e in held_out)
        assert abs(n_eval - 0.15 * n) <= 1 and n_eval >= 1
    other = split_emoji(CATALOGUE, seed=1, eval_share=0.15)[1]
    assert {e.name for e in other} != {e.name for e in held_out}
    few, same_eval = split_emoji(CATALOGUE, seed=0, eval_share=0.15, per_class=3)
    assert same_eval == held_out and set(few) <= set(train)
    assert {g: sum(e.group == g for e in few) for g in {e.group for e in CATALOGUE}} == {g: 3 for g in {e.group for e in CATALOGUE}}


def test_same_seed_same_bytes_any_jobs_and_other_seed_differs(tmp_path):
    def build(name: str, seed: int, jobs: int) -> dict[str, bytes]:
        root = tmp_path / name
        build_demo_data(DemoDataConfig(out=str(root), seed=seed, n_train=40, n_eval=8, jobs=jobs, preview=False),
                        progress=False)
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/*"))}

    first, again, other = build("a", 0, 2), build("b", 0, 1), build("c", 1, 2)
    assert len(first) == 40 + 8 + 2  # images and two metadata files
    assert first == again
    assert first["train/metadata.jsonl"] != other["train/metadata.jsonl"]
    shared = set(first) & set(other)
    assert sum(first[k] != other[k] for k in shared) > 0.9 * len(shared)


def test_share_below_train_size_matches_the_target(moderate):
    rng = np.random.default_rng(123)
    cfg = DemoDataConfig(out="unused")
    edges = np.array([round(original_short_edge(rng, cfg)) for _ in range(40_000)])
    assert abs((edges < 32).mean() - 0.40) < 0.01
    records = _records(moderate, "train")
    short = np.array([min(r["original_size"]) for r in records])
    assert abs((short < 32).mean() - 0.40) < 0.06
    assert short.min() >= cfg.min_size and short.max() > 100  # a tail of large originals
    summary = json.loads((moderate / "demo-data.json").read_text())["summary"]["train"]
    assert summary["share_short_edge_below_train_size"] == pytest.approx((short < 32).mean())
    assert {r["format"] for r in records} == {"PNG", "JPEG"}
    for r in records:  # never upscaled beyond the canvas at the font's native resolution
        assert r["original_size"][0] <= r["canvas_size"][0] and r["original_size"][1] <= r["canvas_size"][1]
        assert 0.5 <= r["original_size"][1] / r["original_size"][0] <= 2.0 + 0.2


@pytest.mark.parametrize("split", ["train", "eval"])
def test_box_is_inside_and_the_margin_is_background(moderate, split):
    for r in _records(moderate, split):
        pixels = _pixels(moderate, split, r)
        h, w = r["original_size"]
        assert pixels.shape == (h, w, 3)
        top, left, bottom, right = r["box"]
        assert 0 < top < bottom < h and 0 < left < right < w, r  # inside, with a margin
        assert tuple(r["background"]) in PALETTE
        off = np.abs(pixels - np.array(r["background"])).max(axis=2)  # (h, w)
        outside = np.ones((h, w), bool)
        outside[top:bottom, left:right] = False
        border = np.concatenate([off[0], off[-1], off[:, 0], off[:, -1]])
        if r["format"] == "PNG":
            assert off[outside].max() == 0, r
        else:  # JPEG ringing reaches the margin of small images; the mean stays low
            assert border.mean() < (12 if min(h, w) >= 32 else 40), r
        if split == "eval":  # full resolution: the planned 8 % margin holds exactly
            assert min(top, left, h - bottom, w - right) >= int(0.08 * min(h, w)), r


def test_recorded_label_matches_the_glyph(moderate):
    classes = json.loads((moderate / "classes.json").read_text())
    assert classes == sorted(classes) and len(classes) == 9
    rng = np.random.default_rng(0)
    names = sorted(BY_NAME)
    checked = 0
    for split in ("train", "eval"):
        for r in _records(moderate, split):
            e = BY_NAME[r["name"]]
            assert (r["group"], r["subgroup"], r["codepoints"]) == (e.group, e.subgroup, e.codepoints)
            assert r["label"] == classes.index(e.group)
            top, left, bottom, right = r["box"]
            crop = _pixels(moderate, split, r)[top:bottom, left:right].astype(np.float64)
            if split == "eval":  # full resolution PNG: the crop IS the glyph on its background
                assert np.array_equal(crop, _glyph_on(r["name"], r["background"])), r
            if min(r["original_size"]) < 24:
                continue  # too few pixels to tell emoji apart reliably
            others = rng.choice([n for n in names if n != r["name"]], 7, replace=False)
            errors = [np.mean((_glyph_on(n, r["background"], (right - left, bottom - top)) - crop) ** 2)
                      for n in [r["name"], *others]]
            assert int(np.argmin(errors)) == 0, (r, list(others))
            checked += 1
    assert checked > 200


def test_eval_uses_other_emoji_at_full_resolution(moderate):
    train, held_out = _records(moderate, "train"), _records(moderate, "eval")
    assert {r["name"] for r in train}.isdisjoint(r["name"] for r in held_out)
    assert all(r["original_size"] == r["canvas_size"] and r["format"] == "PNG" for r in held_out)
    with Image.open(moderate / "preview.png") as preview:
        assert preview.width == 1400 and preview.height > 100


def test_cli_builds_rebuilds_and_refuses_foreign_folders(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo-data", "--out", str(out), "--n-train", "6", "--n-eval", "3", "--jobs", "2", "--preview", "off"]
    assert main(argv) == 0
    assert f"demo data in {out}" in capsys.readouterr().out
    first = (out / "train" / "metadata.jsonl").read_bytes()
    assert main(argv) == 0  # a previous build is replaced
    assert (out / "train" / "metadata.jsonl").read_bytes() == first
    assert len(list((out / "train").iterdir())) == 7
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "mine.jpg").write_bytes(b"x")
    assert main(["demo-data", "--out", str(foreign)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (foreign / "mine.jpg").exists()


def test_cli_missing_font_is_one_line_naming_the_fix(tmp_path, capsys):
    assert main(["demo-data", "--out", str(tmp_path / "x"), "--font", str(tmp_path / "none.ttf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "apt-get install fonts-noto-color-emoji" in err and "--font" in err
    assert not (tmp_path / "x").exists()


def test_ensure_demo_data_builds_a_missing_folder_of_the_default_mix(tmp_path, monkeypatch):
    """A folder with no build record is built, even when the mix asked for is the default one."""
    from microcond.experiments import launch as runner

    built = []
    monkeypatch.setattr("microcond.demodata.build.build_demo_data", lambda cfg, progress: built.append(cfg) or {"cfg": cfg})
    monkeypatch.setattr("microcond.demodata.build.describe", lambda summary: "built")
    runner.ensure_demo_data(tmp_path / "data-web", "web", n_train=10, n_eval=5, progress=False)
    assert [(c.out, c.aspect_mix, c.n_train) for c in built] == [(str(tmp_path / "data-web"), "web", 10)]
