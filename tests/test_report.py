"""Report: discard shares, aspect classes and bucket fill against hand counts; files written; no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from microcond.cli.main import main
from microcond.data.buckets import assign_bucket, parse_buckets
from microcond.data.report import bucket_fill, min_edge_discards, write_report
from microcond.data.scan import scan

SIZES = [(50, 100), (200, 300), (600, 800), (1200, 700), (64, 64)]  # (h, w)


@pytest.fixture
def index(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, (h, w) in enumerate(SIZES):
        Image.new("RGB", (w, h), (i * 40, 90, 160)).save(data / f"{i}.png")
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut")
    scan([data], tmp_path / "index.parquet", workers=1, progress=False)
    return tmp_path / "index.parquet"


def test_min_edge_discards_match_hand_counts():
    h, w = np.array([s[0] for s in SIZES]), np.array([s[1] for s in SIZES])
    pixels = [a * b for a, b in SIZES]
    rows = {edge: (n, img, pix) for edge, n, img, pix in min_edge_discards(h, w)}
    assert rows[64] == (1, 0.2, pytest.approx(pixels[0] / sum(pixels)))  # 64x64 is kept at 64
    assert rows[256][0] == 3 and rows[256][2] == pytest.approx((pixels[0] + pixels[1] + pixels[4]) / sum(pixels))
    assert rows[1024] == (5, 1.0, pytest.approx(1.0))


def test_bucket_fill_counts_every_image_once_and_upscaled_ones():
    buckets = parse_buckets("sdxl")
    h, w = np.array([s[0] for s in SIZES]), np.array([s[1] for s in SIZES])
    fill = bucket_fill(h, w, buckets)
    assert sum(n for n, _ in fill.values()) == len(SIZES)
    for size in SIZES:
        assert fill[assign_bucket(*size, buckets)][0] >= 1
    assert sum(up for _, up in fill.values()) == 5  # every image is smaller than its ~1 MP bucket


def test_write_report_tables_and_pictures(index, tmp_path):
    out = tmp_path / "report"
    text = write_report(index, out, buckets="base:256")
    for name in ("report.md", "sizes.png", "min_edge.png", "aspect.png", "buckets.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    for name in ("sizes.png", "min_edge.png", "aspect.png", "buckets.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and min(im.size) > 300
    md = (out / "report.md").read_text()
    assert "6 files in the index: 5 usable, 1 unusable (1 truncated)" in md
    assert "| < 256 px     |                3 |           60.0% |" in md
    assert "| 3:4 - 4:3 (near square) |      1 | 20.0% |" in md  # 800/600 is 4:3, counted above
    assert md in text


def test_report_without_usable_images_says_so(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    scan([tmp_path], tmp_path / "i.parquet", workers=1, progress=False)
    text = write_report(tmp_path / "i.parquet", tmp_path / "r")
    assert "No usable images" in text and not (tmp_path / "r" / "sizes.png").exists()


def test_cli_report_and_bad_buckets(index, tmp_path, capsys):
    assert main(["report", str(index), "--out", str(tmp_path / "r")]) == 0
    assert "share of pixels" in capsys.readouterr().out
    assert main(["report", str(index), "--out", str(tmp_path / "r"), "--buckets", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bucket" in err


def test_report_does_not_import_torch(index, tmp_path):
    code = (
        "import sys; from microcond.data.report import write_report; "
        f"write_report({str(index)!r}, {str(tmp_path / 'r')!r}); "
        "bad = [m for m in ('torch', 'diffusers') if m in sys.modules]; assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_min_edges_choose_the_table_rows(index, tmp_path):
    text = write_report(index, tmp_path / "r", min_edges=[32, 16])
    rows = [line for line in text.splitlines() if line.startswith("| < ")]
    assert [r.split("|")[1].strip() for r in rows] == ["< 16 px", "< 32 px"]
    with pytest.raises(ValueError, match="min-edges"):
        write_report(index, tmp_path / "r2", min_edges=[0])


@pytest.mark.parametrize("flags, expected", [
    (["--min-edges", "99999999999999999999"], "--min-edges must be whole pixel sizes from 1 to 65536"),
    (["--min-edges", "64", "70000"], "--min-edges must be whole pixel sizes from 1 to 65536"),
    (["--min-edges", "-3"], "--min-edges must be whole pixel sizes from 1 to 65536"),
    (["--buckets", "base:1000000000:step=1"], "at most 16384 px"),
    (["--buckets", "base:4096:step=8"], "limit of 10000"),
])
def test_cli_report_refuses_out_of_range_flags_in_one_line(index, tmp_path, capsys, flags, expected):
    assert main(["report", str(index), "--out", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_effective_section_counts_upscaled_images_and_draws_file_against_effective(tmp_path):
    from microcond.data.report import upscale_factors

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i, factor in enumerate([1, 1, 1, 2, 3]):  # 2 of 5 upscaled by more than 1.25x
        noise = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
        if factor > 1:
            noise = noise.resize((160 // factor, 120 // factor), Image.BOX).resize((160, 120), Image.BICUBIC)
        noise.save(data / f"{i}.png")
    scan([data], tmp_path / "index.parquet", workers=1, progress=False, effective=True)
    text = write_report(tmp_path / "index.parquet", tmp_path / "r")
    assert "| upscaled > 1.25x on an axis         |      2 |             40.0% |" in text
    assert "| upscaled > 2x on an axis            |      1 |             20.0% |" in text
    with Image.open(tmp_path / "r" / "effective.png") as im:
        assert im.format == "PNG" and min(im.size) > 300
    factors = upscale_factors(np.array([100, 100]), np.array([200, 200]), np.array([100, 50]), np.array([100, 200]))
    assert factors.tolist() == [2.0, 2.0]


def test_report_without_effective_sizes_has_no_effective_section(index, tmp_path):
    text = write_report(index, tmp_path / "r")
    assert "Effective size" not in text and not (tmp_path / "r" / "effective.png").exists()
