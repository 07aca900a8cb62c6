"""Image sizes from file headers, EXIF-aware, without decoding pixels (what ``microcond scan`` runs).

JPEG, PNG, GIF, WebP, BMP and TIFF headers are parsed by :mod:`microcond.data.formats`, reading a
few KiB per file (open, one or two ``pread``s, close); anything unusual and the other formats go
to ``PIL.Image.open``.
Orientation follows Pillow exactly: the EXIF tag in IFD0, else XMP ``tiff:Orientation``. See
:mod:`microcond.data.scan` for what counts as truncated and which modes are accepted.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from microcond.data.formats import PARSERS, SWAP_ORIENTATIONS, Fallback, File, HeaderProblem, webp

# Pillow's own decompression-bomb error threshold (2 * Image.MAX_IMAGE_PIXELS).
DEFAULT_MAX_PIXELS = 178_956_970
# No real image has a longer side; a header claiming one is corrupt (and would not fit the index).
MAX_SIDE = 1 << 20
ACCEPTED_MODES = frozenset(
    "1 L LA P PA RGB RGBA RGBa RGBX CMYK YCbCr LAB HSV I F I;16 I;16L I;16B I;16N".split()
)


class Probe(NamedTuple):
    """What a scan records for one file (height, width oriented; None when unknown)."""

    height: int | None
    width: int | None
    format: str | None
    status: str
    reason: str | None


def size_problem(height: int, width: int) -> str | None:
    """Why a recorded size is absurd (a side below 1 or above :data:`MAX_SIDE`); None when it is plausible."""
    if 1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE:
        return None
    return f"a size of {width}x{height} (w x h): expected each side from 1 to {MAX_SIDE} pixels"


def _absurd(height: int, width: int, fmt: str | None) -> Probe | None:
    """The probe of a header whose size is absurd (listed, the size not stored); None when plausible."""
    reason = size_problem(height, width)
    return None if reason is None else Probe(None, None, fmt, "bad_header", f"{fmt} header gives {reason}")


def _pillow(path: str, max_pixels: int) -> Probe:
    """Pillow's view of one file: open (header only), size, mode, then EXIF orientation."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # the scan applies its own limit, before anything is decoded
    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        return Probe(None, None, None, "not_image", "not an image format this scan or Pillow reads")
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError, OSError) as err:
        return Probe(None, None, None, "bad_header", f"Pillow: {err}")
    with im:
        w, h = im.size
        fmt = im.format
        if (absurd := _absurd(h, w, fmt)) is not None:
            return absurd
        if w * h > max_pixels:
            return Probe(h, w, fmt, "too_large", f"{w}x{h} (w x h) = {w * h} pixels > --max-pixels {max_pixels}")
        if im.mode not in ACCEPTED_MODES:
            return Probe(h, w, fmt, "bad_mode", f"{fmt} in mode {im.mode!r}, which Pillow cannot convert to RGB")
        try:
            orientation = im.getexif().get(0x0112, 1)  # may decode a PNG with eXIf after IDAT
        except (SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, OSError) as err:
            status = "truncated" if "truncated" in str(err) else "bad_header"
            return Probe(h, w, fmt, status, f"Pillow cannot read the EXIF block: {err}")
    # Pillow's TIFF plugin reports the oriented size already (and transposes on load).
    if orientation in SWAP_ORIENTATIONS and fmt != "TIFF":
        h, w = w, h
    return Probe(h, w, fmt, "ok", None)


def probe_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Probe:
    """Size (h, w) after EXIF orientation, format and status of one file, from its header."""
    return _probe_file(os.fspath(path), max_pixels)[2]


def _probe_file(path: str, max_pixels: int) -> tuple[int | None, int | None, Probe]:
    """(bytes, mtime_ns, probe) of one file: the stat comes from the open file (one syscall less)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO must not hang the scan
    except OSError as err:
        return None, None, Probe(None, None, None, "unreadable", f"cannot open: {err.strerror or err}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, None, Probe(None, None, None, "unreadable", "not a regular file")
        return st.st_size, st.st_mtime_ns, _probe_open(fd, path, st.st_size, max_pixels)
    except OSError as err:
        return None, None, Probe(None, None, None, "unreadable", f"cannot read: {err.strerror or err}")
    finally:
        os.close(fd)


def _probe_open(fd: int, path: str, size: int, max_pixels: int) -> Probe:
    if size == 0:
        return Probe(None, None, None, "zero_bytes", "the file is empty (0 bytes)")
    f = File(fd, size)
    head = f.head
    parser = next((p for magic, p in PARSERS if head.startswith(magic)), None)
    if parser is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        parser = webp
    try:
        if parser is None:
            raise Fallback
        header = parser(f)
    except Fallback:
        return _pillow(path, max_pixels)
    except HeaderProblem as p:
        h, w = p.size or (None, None)
        if h is not None and (absurd := _absurd(h, w, p.format)) is not None:
            return absurd
        return Probe(h, w, p.format, p.status, p.reason)
    h, w = header.height, header.width
    if (absurd := _absurd(h, w, header.format)) is not None:  # e.g. a PNG side of 2**31: would not fit the index
        return absurd
    if header.orientation in SWAP_ORIENTATIONS:
        h, w = w, h
    if h * w > max_pixels:
        return Probe(h, w, header.format, "too_large", f"{w}x{h} (w x h) = {w * h} pixels > --max-pixels {max_pixels}")
    if header.problem is not None:
        return Probe(h, w, header.format, *header.problem)
    return Probe(h, w, header.format, "ok", None)
