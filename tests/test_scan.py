"""Scan: header sizes against Pillow's decode, bad files counted with reasons, incremental index."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from microcond.cli.main import main
from microcond.data import scan as scan_mod
from microcond.data.scan import probe_image, read_index, scan


def _image(h: int, w: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("RGB", "RGBA", "CMYK"):
        return Image.fromarray(rng.integers(0, 255, (h, w, len(mode)), dtype=np.uint8), mode)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    return Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).convert(mode)


def _save(path: Path, im: Image.Image, orientation: int | None = None, **kw) -> Path:
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    im.save(path, **kw)
    return path


def _oracle(path: Path) -> tuple[int, int, str]:
    """Pillow decode + exif_transpose: the shape the loader will produce."""
    with Image.open(path) as im:
        fmt = im.format
        shape = np.asarray(ImageOps.exif_transpose(im)).shape
    return shape[0], shape[1], fmt


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_jpeg_size_equals_decoded_shape(tmp_path, orientation):
    path = _save(tmp_path / "r.jpg", _image(40, 24), orientation)
    probe = probe_image(path)
    assert probe.status == "ok"
    assert (probe.height, probe.width, probe.format) == _oracle(path)


def _gif_with_frame_outside_screen(path: Path) -> Path:
    """A GIF whose first frame is larger than its logical screen (Pillow enlarges the size)."""
    buf = io.BytesIO()
    _image(20, 30, "P").save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = (10).to_bytes(2, "little") + (5).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'


def _mixed_corpus(d: Path) -> list[tuple[Path, bool]]:
    """(file, read by the fast parser) for the cases the fast parser must get exactly right."""
    files = [
        (_save(d / "baseline.jpg", _image(33, 50)), True),
        (_save(d / "progressive_o6.jpg", _image(33, 50), 6, progressive=True), True),
        (_save(d / "cmyk_o8.jpg", _image(21, 17, "CMYK"), 8), True),
        (_save(d / "gray_o5.jpg", _image(9, 31, "L"), 5), True),
        (_save(d / "xmp_only.jpg", _image(12, 40), xmp=XMP), True),
        (_save(d / "exif_wins_over_xmp.jpg", _image(12, 40), 3, xmp=XMP), True),
        (_save(d / "rgb16.png", _image(7, 13, "I;16")), True),
        (_save(d / "palette.png", _image(25, 11, "P")), True),
        (_save(d / "la_interlaced.png", _image(25, 11, "LA"), interlace=1), True),
        (_save(d / "exif_o6.png", _image(14, 29), 6), False),
        (_save(d / "bits1.png", _image(8, 9, "1")), True),
        (_save(d / "anim.gif", _image(16, 24, "P"), save_all=True, append_images=[_image(16, 24, "P", 1)]), True),
        (_gif_with_frame_outside_screen(d / "extent.gif"), True),
        (_save(d / "lossy.webp", _image(30, 44), quality=50), True),
        (_save(d / "lossless.webp", _image(30, 44), lossless=True), True),
        (_save(d / "alpha.webp", _image(30, 44, "RGBA"), quality=60), True),
        (_save(d / "exif_o6.webp", _image(30, 44), 6), True),
        (_save(d / "anim.webp", _image(18, 22), save_all=True, append_images=[_image(18, 22, seed=2)]), True),
        (_save(d / "rgb.bmp", _image(13, 21)), True),
        (_save(d / "gray.bmp", _image(13, 21, "L")), True),
        (_save(d / "bits1.bmp", _image(13, 21, "1")), True),
        (_save(d / "rgba.bmp", _image(13, 21, "RGBA")), True),
        (_save(d / "o6.tif", _image(19, 23), 6), True),
        (_save(d / "gray_lzw_o8.tif", _image(19, 23, "L"), 8, compression="tiff_lzw"), True),
        (_save(d / "cmyk_big_endian.tif", _image(9, 5, "CMYK"), big_endian=True), True),
        (_save(d / "rgb16.tif", _image(7, 13, "I;16")), False),
    ]
    return files


def test_fast_parser_agrees_with_pillow_on_mixed_corpus(tmp_path, monkeypatch):
    files = _mixed_corpus(tmp_path)
    used_pillow = set()
    from microcond.data import headers

    pillow = headers._pillow

    def counting(path: str, max_pixels: int):
        used_pillow.add(Path(path).name)
        return pillow(path, max_pixels)

    monkeypatch.setattr(headers, "_pillow", counting)
    for path, fast in files:
        probe = probe_image(path)
        assert probe.status == "ok", (path.name, probe)
        assert (probe.height, probe.width, probe.format) == _oracle(path), path.name
        assert (path.name not in used_pillow) == fast, path.name


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(1, 300), w=st.integers(1, 300), orientation=st.integers(1, 8),
    fmt=st.sampled_from(["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]), progressive=st.booleans(),
)
def test_probe_equals_decoded_shape_property(tmp_path_factory, h, w, orientation, fmt, progressive):
    path = tmp_path_factory.mktemp("p") / f"x.{fmt.lower()}"
    kw = {"progressive": progressive} if fmt == "JPEG" else {}
    im = _image(h, w, "P" if fmt == "GIF" else "RGB")
    _save(path, im, orientation if fmt in ("JPEG", "PNG", "WEBP", "TIFF") else None, format=fmt, **kw)
    probe = probe_image(path)
    assert probe.status == "ok"
    assert (probe.height, probe.width, probe.format) == _oracle(path)


def _patched_sof(data: bytes, offset: int, value: int) -> bytes:
    """A JPEG with one byte of its SOF0 segment changed (offset from the marker)."""
    at = data.index(b"\xff\xc0") + offset
    return data[:at] + bytes([value]) + data[at + 1 :]


def _bad_corpus(d: Path) -> dict[str, str]:
    """One file per problem kind, plus good ones; returns name -> expected status."""
    jpeg = (_save(d / "good.jpg", _image(40, 60), 6)).read_bytes()
    png = (_save(d / "good.png", _image(20, 30))).read_bytes()
    webp = (_save(d / "good.webp", _image(20, 30))).read_bytes()
    gif = (_save(d / "good.gif", _image(20, 30, "P"))).read_bytes()
    bmp = (_save(d / "good.bmp", _image(20, 30))).read_bytes()
    tif = (_save(d / "good.tif", _image(20, 30))).read_bytes()
    (d / "cut.tif").write_bytes(tif[:-100])
    (d / "empty.png").write_bytes(b"")
    (d / "cut_header.jpg").write_bytes(jpeg[:100])
    (d / "cut_tail.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (d / "no_iend.png").write_bytes(png[:-12])
    (d / "cut.webp").write_bytes(webp[: len(webp) - 10])
    (d / "cut.gif").write_bytes(gif[:-5])
    (d / "cut.bmp").write_bytes(bmp[:-100])
    (d / "text.jpg").write_text("not an image at all")
    (d / "bits12.jpg").write_bytes(_patched_sof(jpeg, 4, 12))  # 12-bit samples
    (d / "two_components.jpg").write_bytes(_patched_sof(jpeg, 9, 2))
    _save(d / "huge.png", _image(200, 200))
    os.symlink(d / "missing.png", d / "broken_link.png")
    bmp_wide = bytearray(bmp)
    bmp_wide[18:22] = struct.pack("<i", -21)  # width read unsigned: 4294967275
    (d / "wide.bmp").write_bytes(bytes(bmp_wide))
    (d / "wide.png").write_bytes(_png_with_ihdr(0x80000000, 20))
    (d / "bad_crc.png").write_bytes(_png_with_ihdr(30, 20, crc_ok=False))
    os.symlink(d / "loop_b.png", d / "loop_a.png")
    os.symlink(d / "loop_a.png", d / "loop_b.png")
    os.mkfifo(d / "pipe.png")
    return {
        "wide.bmp": "bad_header", "wide.png": "bad_header", "bad_crc.png": "bad_header",
        "loop_a.png": "unreadable", "loop_b.png": "unreadable", "pipe.png": "unreadable",
        "good.jpg": "ok", "good.png": "ok", "good.webp": "ok", "good.gif": "ok", "good.bmp": "ok", "good.tif": "ok", "cut.tif": "truncated",
        "empty.png": "zero_bytes", "cut_header.jpg": "truncated", "cut_tail.jpg": "truncated",
        "no_iend.png": "truncated", "cut.webp": "truncated", "cut.gif": "truncated", "cut.bmp": "truncated",
        "text.jpg": "not_image", "bits12.jpg": "bad_mode", "two_components.jpg": "bad_mode",
        "huge.png": "too_large", "broken_link.png": "unreadable",
    }  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_files_are_counted_with_reasons(tmp_path, workers):
    d = tmp_path / "data"
    d.mkdir()
    expected = _bad_corpus(d)
    (d / "notes.txt").write_text("captions are not images")
    summary = scan([d], tmp_path / "index.parquet", max_pixels=30_000, workers=workers, progress=False)
    rows = read_index(tmp_path / "index.parquet").to_pylist()
    found = {Path(r["path"]).name: r for r in rows}
    assert {name: r["status"] for name, r in found.items()} == expected
    assert all(r["reason"] for r in rows if r["status"] != "ok")
    assert found["good.jpg"]["height"] == 60 and found["good.jpg"]["width"] == 40  # EXIF 6: rotated
    usable = sum(s == "ok" for s in expected.values())
    assert summary.found == len(expected) and summary.usable == usable
    assert summary.usable + sum(summary.problems.values()) == summary.found
    assert summary.problems["truncated"] == 7 and summary.ignored == 1


def test_rescan_reuses_unchanged_rows_and_matches_a_fresh_scan(tmp_path, monkeypatch):
    monkeypatch.setattr(scan_mod, "_CHUNK", 3)  # several chunks, several row batches
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    for i in range(8):
        _save(d / ("sub" if i % 2 else ".") / f"{i}.png", _image(10 + i, 12))
    out = tmp_path / "index.parquet"
    first = scan([d], out, workers=2, progress=False)
    assert (first.new, first.unchanged) == (8, 0)
    _save(d / "sub" / "1.png", _image(99, 12))  # changed
    os.remove(d / "2.png")  # removed
    _save(d / "sub" / "new.jpg", _image(5, 6))  # new
    probed = []
    real = scan_mod._probe_file
    monkeypatch.setattr(scan_mod, "_probe_file", lambda p, m: probed.append(Path(p).name) or real(p, m))
    again = scan([d], out, workers=1, progress=False)
    assert (again.new, again.changed, again.unchanged, again.removed) == (1, 1, 6, 1)
    assert sorted(probed) == ["1.png", "new.jpg"]
    fresh = scan([d], tmp_path / "fresh.parquet", workers=1, progress=False)
    assert fresh.found == again.found == 8
    keep = ["path", "height", "width", "format", "bytes", "mtime_ns", "status"]
    assert read_index(out, columns=keep).equals(read_index(tmp_path / "fresh.parquet", columns=keep))
    heights = dict(zip(*read_index(out, columns=["path", "height"]).to_pydict().values()))
    assert heights[str(d / "sub" / "1.png")] == 99


def test_changed_max_pixels_rescans_everything(tmp_path):
    _save(tmp_path / "a.png", _image(30, 30))
    out = tmp_path / "i.parquet"
    scan([tmp_path], out, workers=1, progress=False)
    summary = scan([tmp_path], out, workers=1, progress=False, max_pixels=100)
    assert summary.full_rescan and summary.problems["too_large"] == 1 and summary.unchanged == 0


def test_index_stores_relative_paths_and_reads_back_absolute(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    _save(data / "a.jpg", _image(8, 8))
    (data / "b.jpg").write_bytes(b"")
    out = tmp_path / "elsewhere" / "index.parquet"
    scan([data, data / "a.jpg"], out, workers=1, progress=False)  # a nested root is scanned once
    assert pq.read_table(out)["path"].to_pylist() == ["../photos/a.jpg", "../photos/b.jpg"]
    assert read_index(out, usable=True)["path"].to_pylist() == [str(data / "a.jpg")]
    assert read_index(out, usable=False)["path"].to_pylist() == [str(data / "b.jpg")]


def test_crashing_file_is_isolated_and_recorded(tmp_path, monkeypatch):
    for name in ("a.png", "crash.png", "z.png"):
        _save(tmp_path / name, _image(6, 7))
    probe = scan_mod._probe_file

    def crash_on_one(path, max_pixels):
        if path.endswith("crash.png"):
            os._exit(1)  # as a segfault in a C library would
        return probe(path, max_pixels)

    monkeypatch.setattr(scan_mod, "_probe_file", crash_on_one)  # forked workers inherit it
    summary = scan([tmp_path], tmp_path / "i.parquet", workers=2, progress=False)
    rows = {Path(r["path"]).name: r["status"] for r in read_index(tmp_path / "i.parquet").to_pylist()}
    assert rows == {"a.png": "ok", "crash.png": "error", "z.png": "ok"} and summary.found == 3


def test_undecodable_file_name_is_listed_not_fatal(tmp_path):
    _save(tmp_path / "fine.png", _image(6, 7))
    (Path(os.fsdecode(bytes(tmp_path) + b"/bad\xff.png"))).write_bytes(b"x")
    summary = scan([tmp_path], tmp_path / "i.parquet", workers=1, progress=False)
    assert summary.found == 2 and summary.problems == {"unreadable": 1}
    assert "UTF-8" in summary.first_problems[0][2]


class _DeniedEntry:
    """A listed entry whose type the system refuses to tell (a link into a folder we may not search;
    simulated, since the tests may run as root, who is never refused)."""

    def __init__(self, entry: os.DirEntry):
        self._entry, self.name, self.path = entry, entry.name, entry.path

    def is_dir(self, follow_symlinks: bool = True) -> bool:
        if follow_symlinks:
            raise PermissionError(errno.EACCES, "Permission denied", self.path)
        return self._entry.is_dir(follow_symlinks=False)

    is_file = stat = is_dir

    def is_symlink(self) -> bool:
        return self._entry.is_symlink()


def test_link_loops_special_files_and_denied_entries_are_listed_and_the_index_written(tmp_path, monkeypatch):
    d = tmp_path / "data"
    d.mkdir()
    _save(d / "good.png", _image(6, 7))
    os.symlink(d / "loop_b.png", d / "loop_a.png")
    os.symlink(d / "loop_a.png", d / "loop_b.png")
    os.mkfifo(d / "pipe.png")
    os.mknod(d / "socket.png", stat.S_IFSOCK | 0o600)
    os.symlink(os.devnull, d / "device.png")
    os.symlink(d / "good.png", d / "denied.png")
    (d / "linked_folder.png").symlink_to(tmp_path, target_is_directory=True)  # not followed: ignored
    real_scandir = os.scandir

    @contextlib.contextmanager
    def scandir(path):
        with real_scandir(path) as it:
            yield [_DeniedEntry(e) if e.name == "denied.png" else e for e in it]

    monkeypatch.setattr(os, "scandir", scandir)
    summary = scan([d], tmp_path / "i.parquet", workers=1, progress=False)
    rows = {Path(r["path"]).name: (r["status"], r["reason"]) for r in read_index(tmp_path / "i.parquet").to_pylist()}
    assert rows == {
        "good.png": ("ok", None),
        "denied.png": ("unreadable", "cannot read its file type: Permission denied"),
        "device.png": ("unreadable", "a character device, not a regular file"),
        "loop_a.png": ("unreadable", "symbolic link loop (too many levels of symbolic links)"),
        "loop_b.png": ("unreadable", "symbolic link loop (too many levels of symbolic links)"),
        "pipe.png": ("unreadable", "a FIFO (named pipe), not a regular file"),
        "socket.png": ("unreadable", "a socket, not a regular file"),
    }
    assert summary.found == 7 and summary.problems == {"unreadable": 6} and summary.ignored == 1
    assert [name for name, _, _ in summary.first_problems] == [str(d / n) for n in sorted(rows) if n != "good.png"]


def _png_with_ihdr(width: int, height: int, crc_ok: bool = True) -> bytes:
    data = bytearray(_png_bytes(_image(20, 30)))
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29])) ^ (0 if crc_ok else 1)
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


def _png_bytes(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def test_absurd_header_sizes_and_a_bad_ihdr_crc_are_listed_and_the_scan_goes_on(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    bmp = bytearray((_save(d / "good.bmp", _image(20, 30))).read_bytes())
    bmp[18:22] = struct.pack("<i", -21)  # width 0xFFFFFFEB: read by Pillow (fallback), which reads it unsigned
    (d / "wide.bmp").write_bytes(bytes(bmp))
    (d / "wide.png").write_bytes(_png_with_ihdr(0x80000000, 20))
    (d / "bad_crc.png").write_bytes(_png_with_ihdr(30, 20, crc_ok=False))
    (d / "good.png").write_bytes(_png_with_ihdr(30, 20))
    summary = scan([d], tmp_path / "i.parquet", workers=1, progress=False)
    rows = {Path(r["path"]).name: r for r in read_index(tmp_path / "i.parquet").to_pylist()}
    assert {name: r["status"] for name, r in rows.items()} == {
        "good.bmp": "ok", "good.png": "ok", "wide.bmp": "bad_header", "wide.png": "bad_header",
        "bad_crc.png": "bad_header",
    }  # fmt: skip
    assert "4294967275x20 (w x h)" in rows["wide.bmp"]["reason"] and "2147483648x20" in rows["wide.png"]["reason"]
    assert "CRC" in rows["bad_crc.png"]["reason"]
    assert all(rows[n]["width"] is None for n in ("wide.bmp", "wide.png", "bad_crc.png"))
    assert summary.found == 5 and summary.usable == 2


def test_not_an_index_is_refused(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="microcond index"):
        scan([tmp_path], tmp_path / "other.parquet", workers=1, progress=False)


def test_cli_scan_lists_problems_and_sums_up(tmp_path, capsys):
    _save(tmp_path / "ok.png", _image(6, 7))
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert main(["scan", str(tmp_path), "--out", str(tmp_path / "i.parquet"), "--list-problems", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "zero_bytes" in out and "empty.jpg" in out
    assert "scanned 2 files: 1 usable, 1 unusable (1 zero_bytes)" in out
    assert main(["scan", str(tmp_path / "nope"), "--out", str(tmp_path / "i.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected an existing file or folder" in err


def test_scan_command_does_not_import_torch(tmp_path):
    _save(tmp_path / "a.png", _image(6, 7))
    code = (
        "import sys; from microcond.cli.main import main; "
        f"main(['scan', {str(tmp_path)!r}, '--out', {str(tmp_path / 'i.parquet')!r}]); "
        "bad = [m for m in ('torch', 'diffusers') if m in sys.modules]; assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "scanned 1 files: 1 usable" in proc.stdout


@pytest.mark.parametrize("workers", ["-2", "0"])
def test_cli_scan_refuses_workers_below_one_in_one_line(tmp_path, capsys, workers):
    _save(tmp_path / "ok.png", _image(6, 7))
    assert main(["scan", str(tmp_path), "--out", str(tmp_path / "i.parquet"), "--workers", workers]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --workers: expected a number of processes from 1" in err and "Traceback" not in err, err
    assert not (tmp_path / "i.parquet").exists()


def test_a_corrupt_index_is_named_in_one_line(tmp_path, capsys):
    _save(tmp_path / "ok.png", _image(6, 7))
    index = tmp_path / "i.parquet"
    index.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(ValueError, match=f"{index} is not a readable index"):
        read_index(index)
    assert main(["scan", str(tmp_path), "--out", str(index), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(index) in err and "another --out" in err
    assert index.read_bytes() == b"PAR1 this is not a parquet file"  # not ours to overwrite


def _textured(h: int, w: int, seed: int = 0, factor: float = 1.0) -> Image.Image:
    """Smooth random texture (blurred noise), area-downscaled by ``factor`` and upscaled back."""
    from PIL import ImageFilter

    im = _image(h, w, seed=seed).filter(ImageFilter.GaussianBlur(1))
    if factor > 1:
        im = im.resize((round(w / factor), round(h / factor)), Image.BOX).resize((w, h), Image.BICUBIC)
    return im


@pytest.mark.parametrize("workers", [1, 2])
def test_effective_scan_lists_every_bad_file_and_measures_the_usable_ones(tmp_path, workers):
    d = tmp_path / "data"
    d.mkdir()
    expected = _bad_corpus(d)
    _save(d / "upscaled.png", _textured(120, 160, factor=2))
    expected["upscaled.png"] = "ok"
    png = bytearray(_png_bytes(_textured(120, 160)))
    png[len(png) // 2 : len(png) // 2 + 64] = bytes(64)  # header and end marker fine, compressed data broken
    (d / "garbled.png").write_bytes(bytes(png))
    expected["garbled.png"] = "ok"
    summary = scan([d], tmp_path / "index.parquet", max_pixels=30_000, workers=workers, progress=False, effective=True)
    rows = {Path(r["path"]).name: r for r in read_index(tmp_path / "index.parquet").to_pylist()}
    assert {name: r["status"] for name, r in rows.items()} == expected
    for name, r in rows.items():
        if r["status"] != "ok":  # listed with its reason, nothing measured
            assert r["reason"] and r["effective_height"] is None and r["effective_reason"] is None, name
        elif r["effective_reason"] is None:
            assert 1 <= r["effective_height"] <= r["height"] and 1 <= r["effective_width"] <= r["width"], name
            assert 0 <= r["effective_confidence"] <= 1
    assert rows["good.jpg"]["effective_height"] == 60 and rows["good.jpg"]["jpeg_quality"] == 75  # EXIF 6: rotated
    assert (rows["upscaled.png"]["effective_height"], rows["upscaled.png"]["effective_width"]) == (60, 80)
    assert "decode" in rows["garbled.png"]["effective_reason"] and rows["garbled.png"]["effective_width"] is None
    assert summary.found == len(expected) and summary.usable == sum(s == "ok" for s in expected.values())
    assert summary.measured == summary.usable and summary.not_measured == 1
    assert summary.first_not_measured == [(str(d / "garbled.png"), rows["garbled.png"]["effective_reason"])]
    assert "1 usable files not measurable" in summary.line()


def test_effective_rescan_measures_only_what_is_missing_or_changed(tmp_path, monkeypatch):
    from microcond.data import effective

    d = tmp_path / "data"
    d.mkdir()
    for i in range(4):
        _save(d / f"{i}.png", _textured(64, 96, seed=i, factor=1 + i % 2))
    (d / "empty.png").write_bytes(b"")
    out = tmp_path / "index.parquet"
    measured = []
    real = effective.estimate
    monkeypatch.setattr(effective, "estimate", lambda path, **kw: measured.append(Path(path).name) or real(path, **kw))

    scan([d], out, workers=1, progress=False)  # headers only
    assert measured == [] and "effective_height" not in pq.read_schema(out).names
    with pytest.raises(ValueError, match="scan --effective"):
        read_index(out, columns=["effective_height"])
    first = scan([d], out, workers=1, progress=False, effective=True)  # headers reused, sizes measured
    assert sorted(measured) == ["0.png", "1.png", "2.png", "3.png"] and first.unchanged == 5 and first.measured == 4
    before = read_index(out)
    measured.clear()
    again = scan([d], out, workers=1, progress=False, effective=True)
    assert measured == [] and again.measured == 0 and read_index(out).equals(before)
    _save(d / "2.png", _textured(64, 96, seed=9))  # changed
    changed = scan([d], out, workers=1, progress=False, effective=True)
    assert measured == ["2.png"] and (changed.changed, changed.measured) == (1, 1)
    measured.clear()
    dropped = scan([d], out, workers=1, progress=False)
    assert measured == [] and dropped.effective_note and "effective_height" not in pq.read_schema(out).names


def test_cli_scan_effective_prints_what_it_measured(tmp_path, capsys):
    _save(tmp_path / "a.png", _textured(64, 96, factor=2))
    (tmp_path / "b.jpg").write_bytes(b"")
    assert main(["scan", str(tmp_path), "--out", str(tmp_path / "i.parquet"), "--workers", "1", "--effective"]) == 0
    out = capsys.readouterr().out
    assert "effective size measured for 1 files" in out and "zero_bytes" in out
    row = read_index(tmp_path / "i.parquet", usable=True).to_pylist()[0]
    assert (row["effective_height"], row["effective_width"]) == (32, 48)


def test_a_new_estimator_version_measures_every_file_again(tmp_path, monkeypatch):
    from microcond.data import effective

    for i in range(3):
        _save(tmp_path / f"{i}.png", _textured(64, 96, seed=i))
    out = tmp_path / "index.parquet"
    scan([tmp_path], out, workers=1, progress=False, effective=True)
    monkeypatch.setattr(effective, "ESTIMATOR_VERSION", "next")
    again = scan([tmp_path], out, workers=1, progress=False, effective=True)
    assert (again.unchanged, again.measured) == (3, 3) and "every file is measured again" in again.effective_note
    assert json.loads(pq.read_schema(out).metadata[b"microcond.scan"])["effective"] == "next"


def test_a_work_budget_is_part_of_the_index_settings(tmp_path, capsys):
    for i in range(2):
        _save(tmp_path / f"{i}.png", _textured(64, 96, seed=i))
    out = tmp_path / "index.parquet"
    scan([tmp_path], out, workers=1, progress=False, effective=True)
    bounded = scan([tmp_path], out, workers=1, progress=False, effective=True, max_grids=40)
    assert (bounded.unchanged, bounded.measured) == (2, 2) and "at most 40 grids" in bounded.effective_note
    assert json.loads(pq.read_schema(out).metadata[b"microcond.scan"])["effective"].endswith(", at most 40 grids")
    assert scan([tmp_path], out, workers=1, progress=False, effective=True, max_grids=40).measured == 0  # same budget: reused
    with pytest.raises(ValueError, match="max_grids"):
        scan([tmp_path], out, workers=1, progress=False, effective=True, max_grids=0)
    with pytest.raises(ValueError, match="effective=True"):
        scan([tmp_path], out, workers=1, progress=False, max_grids=40)
    assert main(["scan", str(tmp_path), "--out", str(out), "--max-grids", "40"]) == 2  # a budget without --effective
    assert "give --effective too" in capsys.readouterr().err
