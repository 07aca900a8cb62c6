"""Scan: every image's original size from its header, EXIF-aware, into a Parquet index.

The index (one row per file found, in walk order) has the columns
``path`` (relative to the index's folder, ``/``-separated), ``height``, ``width`` (after EXIF
orientation: the shape ``ImageOps.exif_transpose`` gives; null when unknown), ``format``
(Pillow's name), ``bytes``, ``mtime_ns`` (null when the file cannot be read), ``status`` (``"ok"`` or one of :data:`PROBLEMS`) and
``reason`` (a sentence for problems, null for ``ok``). Read it with :func:`read_index`, which
returns absolute paths: ``read_index("index.parquet", usable=True)`` gives the rows a loader may
use.

Headers of JPEG, PNG, GIF, WebP, BMP and TIFF are parsed here, reading a few KiB per file (open,
one or two ``pread``s, close); anything unusual and the other formats go to ``PIL.Image.open``.
Orientation follows Pillow exactly: the EXIF tag in IFD0, else XMP ``tiff:Orientation``.

What a header scan calls ``truncated`` (the loader counts the decode failures it still meets):
a header that ends early; a JPEG without an EOI marker in its last 4 KiB (also true of files
with large data appended, e.g. motion photos: they are listed, check them); a PNG without an IEND
chunk in its last 4 KiB; a GIF whose last byte (after zero padding) is not the trailer ``;``;
a WebP shorter than its RIFF size; an uncompressed BMP shorter than its pixel array; a TIFF
shorter than the end of its last strip. Files read by Pillow alone are not checked. PNG ``eXIf`` chunks after the image data are seen
when they lie in the last 4 KiB.

Accepted modes (:data:`ACCEPTED_MODES`) are those Pillow converts to RGB; 8-bit JPEG only.
Rescans are incremental: rows of files whose ``bytes`` and ``mtime_ns`` are unchanged are reused
(not those whose problem may be passing, ``unreadable`` and ``error``), by merging the sorted
walk with the previous index, so memory does not grow with the number of files. Symbolic links
to files are followed, links to folders are not.
"""

from __future__ import annotations

import collections
import json
import os
import re
import stat
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from struct import unpack_from
from typing import Any, Iterator, NamedTuple, Sequence

# Pillow's own decompression-bomb error threshold (2 * Image.MAX_IMAGE_PIXELS).
DEFAULT_MAX_PIXELS = 178_956_970
IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png apng gif webp bmp dib tif tiff avif".split()
)
PROBLEMS = {
    "zero_bytes": "the file is empty",
    "unreadable": "the operating system refused to read it (permission, I/O error, bad name)",
    "not_image": "no image format recognised (by this scan or by Pillow)",
    "bad_header": "a known format with an invalid header or EXIF block",
    "truncated": "the file ends before its header or end marker",
    "bad_mode": "a pixel layout the loader cannot convert to RGB",
    "too_large": "more pixels than --max-pixels (decompression-bomb limit)",
    "error": "unexpected error in the scanner (please report it)",
}
RETRY_STATUSES = frozenset({"unreadable", "error"})  # may pass: never reused on rescan
ACCEPTED_MODES = frozenset(
    "1 L LA P PA RGB RGBA RGBa RGBX CMYK YCbCr LAB HSV I F I;16 I;16L I;16B I;16N".split()
)
INDEX_VERSION = "1"
PARSER_VERSION = "1"  # bump when a parser changes what it records: rescans then redo every file
COLUMNS = ("path", "height", "width", "format", "bytes", "mtime_ns", "status", "reason")
TAIL = 4096
_HEAD = 16384
_CHUNK = 512  # files per task sent to a worker
_ROW_GROUP = 65536
_SWAP_ORIENTATIONS = frozenset({5, 6, 7, 8})  # transpose/rotate 90: (h, w) -> (w, h)
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # Pillow Image.getexif
_XMP_JPEG = b"http://ns.adobe.com/xap/1.0/\x00"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PNG_META = (b"Raw profile type exif", b"XML:com.adobe.xmp")  # text chunks Pillow reads EXIF from
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_SKIP = frozenset({0xC4, 0xCC, 0xDB, 0xDD, 0xFE} | set(range(0xE0, 0xF0)))


class Probe(NamedTuple):
    """What a scan records for one file (height, width oriented; None when unknown)."""

    height: int | None
    width: int | None
    format: str | None
    status: str
    reason: str | None


class _Header(NamedTuple):
    height: int
    width: int
    format: str
    mode: str | None  # None: a mode the fast parser knows is accepted
    orientation: int
    problem: tuple[str, str] | None  # found after the size, e.g. a missing end marker


class _Fallback(Exception):
    """The fast parser met something unusual: let Pillow decide."""


class _Problem(Exception):
    def __init__(self, status: str, reason: str, size: tuple[int, int] | None = None, fmt: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.size, self.format = status, reason, size, fmt


class _File:
    """Random access to an open file through ``pread``, buffering its head and one window."""

    __slots__ = ("fd", "size", "head", "win", "win_at")

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.head = os.pread(fd, _HEAD, 0)
        self.win, self.win_at = b"", -1

    def at(self, offset: int, n: int) -> bytes:
        end = offset + n
        if end <= len(self.head):
            return self.head[offset:end]
        if self.win_at <= offset and end <= self.win_at + len(self.win):
            return self.win[offset - self.win_at : end - self.win_at]
        self.win, self.win_at = os.pread(self.fd, max(n, _HEAD), offset), offset
        return self.win[:n]

    def tail(self) -> bytes:
        if self.size <= len(self.head):
            return self.head[-TAIL:]
        return os.pread(self.fd, TAIL, max(0, self.size - TAIL))


def _tiff_orientation(data: bytes) -> int | None:
    """Orientation tag of IFD0 in a TIFF/EXIF block; None when absent; _Fallback when odd."""
    if data.startswith(b"Exif\x00\x00"):
        data = data[6:]
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8:
        raise _Fallback
    (ifd,) = unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        raise _Fallback
    (count,) = unpack_from(order + "H", data, ifd)
    if ifd + 2 + 12 * count > len(data):
        raise _Fallback
    for i in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind, n = unpack_from(order + "HHI", data, i)
        if tag == 0x0112:
            if kind != 3 or n != 1:
                raise _Fallback
            return unpack_from(order + "H", data, i + 8)[0]
    return None


def _xmp_orientation(xmp: bytes | None) -> int | None:
    match = _XMP_ORIENTATION.search(xmp) if xmp else None
    return int(match[2]) if match else None


def _jpeg(f: _File) -> _Header:
    """JPEG: SOFn size, APP1 EXIF/XMP orientation, EOI in the tail (as Pillow's JpegImagePlugin)."""
    pos, sof, exif, xmp = 2, None, None, None
    while True:
        b = f.at(pos, 4)
        if len(b) < 4:
            raise _Problem("truncated", "JPEG ends inside its header (no start-of-scan marker)")
        if b[0] != 0xFF:
            raise _Fallback
        marker = b[1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: header complete
            break
        length = b[2] << 8 | b[3]
        if marker in _JPEG_SOF:
            sof = f.at(pos + 4, 6)
        elif marker == 0xE1:
            seg = f.at(pos + 4, length - 2)
            if seg.startswith(b"Exif\x00\x00") and exif is None:
                exif = seg  # Pillow keeps the first; IFD0 lies in it
            elif seg.startswith(_XMP_JPEG):
                xmp = seg  # Pillow keeps the last
        elif marker not in _JPEG_SKIP or length < 2:
            raise _Fallback
        pos += 2 + length
    if sof is None or len(sof) < 6:
        raise _Fallback
    bits, h, w, layers = sof[0], sof[1] << 8 | sof[2], sof[3] << 8 | sof[4], sof[5]
    if h == 0 or w == 0:
        raise _Fallback  # height from a DNL marker, or invalid: Pillow decides
    if bits != 8 or layers not in (1, 3, 4):
        raise _Problem("bad_mode", f"JPEG with {bits}-bit samples and {layers} components: Pillow decodes "
                       "8-bit JPEG with 1, 3 or 4 components only", (h, w), "JPEG")
    orientation = _tiff_orientation(exif) if exif is not None else None
    if orientation is None:
        orientation = _xmp_orientation(xmp)
    problem = None
    if b"\xff\xd9" not in f.tail():
        problem = ("truncated", "no JPEG end marker (EOI) in the last 4 KiB: truncated, or data appended")
    return _Header(h, w, "JPEG", None, orientation or 1, problem)


def _png(f: _File) -> _Header:
    """PNG: IHDR size; EXIF/XMP chunks send the file to Pillow; IEND in the tail."""
    ihdr = f.at(8, 25)
    if len(ihdr) < 25:
        raise _Problem("truncated", "PNG ends inside its IHDR chunk")
    if ihdr[4:8] != b"IHDR":
        raise _Fallback
    w, h = unpack_from(">II", ihdr, 8)
    if h == 0 or w == 0:
        raise _Fallback
    pos = 33
    while True:  # chunks before the image data, where Pillow reads metadata at open
        b = f.at(pos, 8)
        if len(b) < 8:
            raise _Problem("truncated", "PNG ends before its image data (IDAT)", (h, w), "PNG")
        (length,) = unpack_from(">I", b, 0)
        kind = b[4:8]
        if kind == b"IDAT":
            break
        if kind == b"eXIf" or (kind in (b"tEXt", b"zTXt", b"iTXt") and f.at(pos + 8, 22).startswith(_PNG_META)):
            raise _Fallback
        pos += 12 + length
    tail = f.tail()
    if b"eXIf" in tail or any(key in tail for key in _PNG_META):
        raise _Fallback
    problem = None if _PNG_IEND in tail else ("truncated", "no PNG IEND chunk in the last 4 KiB")
    return _Header(h, w, "PNG", None, 1, problem)


def _gif(f: _File) -> _Header:
    """GIF: logical screen, enlarged by the first frame's extent (as Pillow); trailer at the end."""
    head = f.at(0, 13)
    if len(head) < 13:
        raise _Problem("truncated", "GIF ends inside its header")
    w, h = unpack_from("<HH", head, 6)
    flags = head[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while True:
        b = f.at(pos, 10)
        if not b:
            raise _Problem("truncated", "GIF ends before its first frame", None, "GIF")
        if b[0] == 0x21:  # extension: label, then sub-blocks until a zero length
            pos += 2
            while (n := f.at(pos, 1)) and n[0]:
                pos += 1 + n[0]
            if not n:
                raise _Problem("truncated", "GIF ends inside an extension block", None, "GIF")
            pos += 1
        elif b[0] == 0x2C and len(b) == 10:
            x, y, fw, fh = unpack_from("<HHHH", b, 1)
            w, h = max(w, x + fw), max(h, y + fh)
            break
        else:
            raise _Fallback
    if h == 0 or w == 0:
        raise _Fallback
    problem = None if f.tail().rstrip(b"\x00").endswith(b";") else ("truncated", "no GIF trailer at the end")
    return _Header(h, w, "GIF", None, 1, problem)


def _webp(f: _File) -> _Header:
    """WebP: canvas size from VP8X/VP8/VP8L (as Pillow's _get_size); EXIF/XMP chunks of VP8X."""
    head = f.at(0, 30)
    if len(head) < 30:
        raise _Problem("truncated", "WebP ends inside its header")
    riff_end = unpack_from("<I", head, 4)[0] + 8
    chunk = head[12:16]
    orientation = 1
    if chunk == b"VP8X":
        w, h = int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
        if head[20] & 0x0C:  # EXIF or XMP flag: find the chunks (after the image data)
            pos, exif, xmp = 12, None, None
            while pos + 8 <= min(riff_end, f.size):
                kind, (length,) = f.at(pos, 4), unpack_from("<I", f.at(pos + 4, 4))
                if kind in (b"EXIF", b"XMP ") and length > 1 << 20:
                    raise _Fallback
                if kind == b"EXIF":
                    exif = f.at(pos + 8, length)
                elif kind == b"XMP ":
                    xmp = f.at(pos + 8, length)
                pos += 8 + length + (length & 1)
            found = _tiff_orientation(exif) if exif else None
            orientation = found if found is not None else (_xmp_orientation(xmp) or 1)
    elif chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        w, h = unpack_from("<H", head, 26)[0] & 0x3FFF, unpack_from("<H", head, 28)[0] & 0x3FFF
    elif chunk == b"VP8L" and head[20] == 0x2F:
        bits = unpack_from("<I", head, 21)[0]
        w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    else:
        raise _Fallback
    if h == 0 or w == 0:
        raise _Fallback
    problem = None if f.size >= riff_end else ("truncated", f"WebP is {f.size} bytes, its RIFF header says {riff_end}")
    return _Header(h, w, "WEBP", None, orientation, problem)


def _bmp(f: _File) -> _Header:
    """BMP: uncompressed 1/4/8/24/32-bit with a Windows header; anything else goes to Pillow."""
    head = f.at(0, 34)
    if len(head) < 34:
        raise _Problem("truncated", "BMP ends inside its header")
    offset, header_size, w, h, _, bits, compression = unpack_from("<IIiiHHI", head, 10)
    if header_size not in (40, 108, 124) or compression != 0 or bits not in (1, 4, 8, 24, 32) or w <= 0 or h == 0:
        raise _Fallback
    h = abs(h)  # negative height: rows stored top-down
    need = offset + (w * bits + 31) // 32 * 4 * h
    problem = None if f.size >= need else ("truncated", f"BMP is {f.size} bytes, its pixel array ends at {need}")
    return _Header(h, w, "BMP", None, 1, problem)


# TIFF layouts read here (photometric, samples per pixel, bits per sample); others go to Pillow.
_TIFF_LAYOUTS = frozenset({(0, 1, 1), (1, 1, 1), (0, 1, 8), (1, 1, 8), (2, 3, 8), (2, 4, 8), (3, 1, 8), (5, 4, 8)})
_TIFF_COMPRESSIONS = frozenset({1, 5, 7, 8, 32773, 32946})  # raw, LZW, JPEG, deflate, packbits
_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG


def _tiff(f: _File) -> _Header:
    """Classic TIFF, first IFD: size, orientation (Pillow reports the oriented size), strip ends."""
    order = "<" if f.at(0, 2) == b"II" else ">"
    (ifd,) = unpack_from(order + "I", f.at(4, 4).rjust(4, b"\0"))
    raw = f.at(ifd, 2)
    if len(raw) < 2:
        raise _Problem("truncated", "TIFF ends before its first image directory")
    (count,) = unpack_from(order + "H", raw)
    entries = f.at(ifd + 2, 12 * count)
    if len(entries) < 12 * count:
        raise _Problem("truncated", "TIFF ends inside its first image directory")
    tags: dict[int, tuple[int, ...]] = {}
    for i in range(0, 12 * count, 12):
        tag, kind, n = unpack_from(order + "HHI", entries, i)
        if kind not in _TIFF_TYPES:
            continue  # rationals, strings: not needed here
        code, size = _TIFF_TYPES[kind]
        data = entries[i + 8 : i + 12] if n * size <= 4 else f.at(unpack_from(order + "I", entries, i + 8)[0], n * size)
        if len(data) < n * size:
            raise _Fallback
        tags[tag] = unpack_from(f"{order}{n}{code}", data)
    try:
        w, h = tags[256][0], tags[257][0]
        layout = (tags[262][0], tags.get(277, (1,))[0], max(tags.get(258, (1,))))
        offsets, counts = tags[273], tags[279]
    except (KeyError, IndexError):
        raise _Fallback from None
    if (h == 0 or w == 0 or layout not in _TIFF_LAYOUTS or tags.get(259, (1,))[0] not in _TIFF_COMPRESSIONS
            or tags.get(284, (1,))[0] != 1 or max(tags.get(339, (1,))) != 1 or len(offsets) != len(counts)):
        raise _Fallback
    end = max(o + c for o, c in zip(offsets, counts))
    problem = None if f.size >= end else ("truncated", f"TIFF is {f.size} bytes, its image data ends at {end}")
    return _Header(h, w, "TIFF", None, tags.get(274, (1,))[0], problem)


_PARSERS = (
    (b"\xff\xd8\xff", _jpeg), (b"\x89PNG\r\n\x1a\n", _png), (b"GIF87a", _gif), (b"GIF89a", _gif), (b"BM", _bmp),
    (b"II*\x00", _tiff), (b"MM\x00*", _tiff),
)  # fmt: skip


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
        if h == 0 or w == 0:
            return Probe(h, w, fmt, "bad_header", f"{fmt} header gives a size of {w}x{h} (w x h)")
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
    if orientation in _SWAP_ORIENTATIONS and fmt != "TIFF":
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
    f = _File(fd, size)
    head = f.head
    parser = next((p for magic, p in _PARSERS if head.startswith(magic)), None)
    if parser is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        parser = _webp
    try:
        if parser is None:
            raise _Fallback
        header = parser(f)
    except _Fallback:
        return _pillow(path, max_pixels)
    except _Problem as p:
        h, w = p.size or (None, None)
        return Probe(h, w, p.format, p.status, p.reason)
    h, w = header.height, header.width
    if header.orientation in _SWAP_ORIENTATIONS:
        h, w = w, h
    if h * w > max_pixels:
        return Probe(h, w, header.format, "too_large", f"{w}x{h} (w x h) = {w * h} pixels > --max-pixels {max_pixels}")
    if header.problem is not None:
        return Probe(h, w, header.format, *header.problem)
    return Probe(h, w, header.format, "ok", None)


def _probe_many(items: list[tuple[str, int, int]], max_pixels: int) -> list[tuple[int | None, int | None, Probe | None]]:
    """Worker task: (path, previous bytes, previous mtime_ns; -1 when none) -> (bytes, mtime_ns,
    probe), probe None when bytes and mtime are unchanged. Never raises for one bad file."""
    out = []
    for path, old_bytes, old_mtime in items:
        try:
            if old_bytes >= 0:
                try:
                    st = os.stat(path)
                except OSError:
                    st = None  # the probe records why
                if st is not None and st.st_size == old_bytes and st.st_mtime_ns == old_mtime:
                    out.append((old_bytes, old_mtime, None))
                    continue
            out.append(_probe_file(path, max_pixels))
        except Exception as err:  # a parser bug must not stop the scan: recorded, listed
            out.append((None, None, Probe(None, None, None, "error", f"{type(err).__name__}: {err}")))
    return out


# ------------------------------------------------------------------------------- walk and index


class _Entry(NamedTuple):
    rel: str  # relative to the index's folder, "/"-separated: the stored path and sort key
    path: str  # as given to the OS
    status: str | None  # known without probing (bad name, broken link)
    reason: str | None


def _stored_name(name: str) -> tuple[str, bool]:
    """A name Parquet can hold (UTF-8); undecodable bytes are escaped and flagged."""
    try:
        name.encode("utf-8")
        return name, True
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace"), False


def _key(rel: str) -> list[str]:
    """Sort key of the walk and of the index: path components, so that a folder's files stay together."""
    return rel.split("/")


class _Walk:
    """Sorted, streaming walk of several roots, merged into one tree of paths relative to the index."""

    def __init__(self, roots: Sequence[str], index_dir: str, all_files: bool, skip: set[str]):
        self.all_files, self.skip, self.index_dir = all_files, skip, index_dir
        self.ignored, self.unreadable_folders = 0, []
        self.tree: dict[Any, Any] = {}  # component -> subtree; key None marks a root
        for root in roots:
            node = self.tree
            rel = os.path.relpath(root, index_dir).replace(os.sep, "/")
            for part in [] if rel == "." else rel.split("/"):
                node = node.setdefault(part, {})
            node[None] = True

    def __iter__(self) -> Iterator[_Entry]:
        return self._visit(self.index_dir, "", self.tree, True)

    def _visit(self, folder: str, prefix: str, virtual: dict, name_ok: bool) -> Iterator[_Entry]:
        items: list[tuple[str, bool, Any]] = [(name, True, sub) for name, sub in virtual.items() if name is not None]
        if virtual.get(None):
            try:
                with os.scandir(folder) as it:
                    items += [(*_stored_name(e.name), e) for e in it]
            except OSError as err:
                self.unreadable_folders.append((prefix or "./", err.strerror or str(err)))
        items.sort(key=lambda item: item[0])
        for name, ok, item in items:
            rel, good = prefix + name, name_ok and ok
            if isinstance(item, dict):  # a root or a folder on the way to one
                path = os.path.join(folder, name)
                if item.get(None) and not os.path.isdir(path):
                    yield self._entry(rel, path, good)  # a file named on the command line: any extension
                else:
                    yield from self._visit(path, rel + "/", item, good)
            elif item.is_dir(follow_symlinks=False):
                yield from self._visit(item.path, rel + "/", {None: True}, good)
            elif not self.all_files and name[name.rfind(".") + 1 :].lower() not in IMAGE_EXTENSIONS:
                self.ignored += 1
            elif item.path in self.skip:
                continue
            elif item.is_file():  # file type from the folder listing: no stat here (workers stat)
                yield self._entry(rel, item.path, good)
            elif item.is_symlink() and not item.is_dir():
                yield _Entry(rel, item.path, "unreadable", "broken symbolic link")
            else:  # a link to a folder, a FIFO, a device
                self.ignored += 1

    @staticmethod
    def _entry(rel: str, path: str, name_ok: bool) -> _Entry:
        if name_ok:
            return _Entry(rel, path, None, None)
        return _Entry(rel, path, "unreadable", "file name is not valid UTF-8: rename it")


def _schema(max_pixels: int) -> Any:
    import pyarrow as pa

    settings = json.dumps({"max_pixels": max_pixels, "parser": PARSER_VERSION})
    return pa.schema(
        [("path", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("format", pa.string()),
         ("bytes", pa.int64()), ("mtime_ns", pa.int64()), ("status", pa.string()), ("reason", pa.string())],
        metadata={"microcond.index": INDEX_VERSION, "microcond.scan": settings},
    )  # fmt: skip


def _check_index(schema: Any, path: Path) -> dict:
    meta = schema.metadata or {}
    if meta.get(b"microcond.index") != INDEX_VERSION.encode():
        raise ValueError(
            f"expected a microcond index (version {INDEX_VERSION}) at {path}, found a Parquet file without one: "
            "pass the file `microcond scan --out` wrote, or another --out to scan into"
        )
    return json.loads(meta.get(b"microcond.scan", b"{}"))


class _Prior:
    """The previous index, read in row batches and merged with the (equally sorted) walk."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path, self.removed = path, 0
        self._rows = self._iter(pq.ParquetFile(path))
        self._row, self._key = self._next()

    def _iter(self, pf: Any) -> Iterator[tuple]:
        for batch in pf.iter_batches(batch_size=8192, columns=list(COLUMNS)):
            yield from zip(*(batch.column(c).to_pylist() for c in COLUMNS))

    def _next(self) -> tuple[tuple | None, list[str] | None]:
        row = next(self._rows, None)
        return row, None if row is None else _key(row[0])

    def take(self, key: list[str]) -> tuple | None:
        """The previous row of ``key``, if any; rows passed over were removed files."""
        while self._key is not None and self._key < key:
            self.removed += 1
            last = self._key
            self._row, self._key = self._next()
            if self._key is not None and self._key <= last:
                raise ValueError(f"expected {self.path} in scan order, found {self._row[0]!r} after "
                                 f"{'/'.join(last)!r}: delete it (or pick another --out) to scan from scratch")
        if self._key == key:
            row = self._row
            self._row, self._key = self._next()
            return row
        return None

    def finish(self) -> None:
        while self._key is not None:
            self.take([chr(0x10FFFF)])


@dataclass
class ScanSummary:
    """Counts of one scan; ``found == usable + sum(problems.values())``."""

    out: Path
    found: int = 0
    problems: collections.Counter = field(default_factory=collections.Counter)
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    ignored: int = 0
    unreadable_folders: list[tuple[str, str]] = field(default_factory=list)
    first_problems: list[tuple[str, str, str]] = field(default_factory=list)
    full_rescan: str | None = None
    seconds: float = 0.0

    @property
    def usable(self) -> int:
        return self.found - sum(self.problems.values())

    def line(self) -> str:
        kinds = ", ".join(f"{n} {s}" for s, n in sorted(self.problems.items(), key=lambda kv: -kv[1]))
        rate = self.found / self.seconds if self.seconds > 0 else 0.0
        text = (f"scanned {self.found} files: {self.usable} usable, {sum(self.problems.values())} unusable"
                f"{f' ({kinds})' if kinds else ''} -> {self.out} [new {self.new}, changed {self.changed}, "
                f"unchanged {self.unchanged}, removed {self.removed}] in {self.seconds:.2f} s ({rate:,.0f} files/s)")
        if self.ignored:
            text += f"; ignored {self.ignored} other files (not image extensions; --all-files scans them)"
        return text


def _import_pyarrow() -> None:
    import pyarrow.parquet  # noqa: F401  (imported while the workers parse: it takes ~0.2 s)


class _Pool:
    """Worker processes probing chunks of files; a crashing file is isolated and recorded."""

    def __init__(self, workers: int, max_pixels: int):
        import multiprocessing

        self.workers, self.max_pixels = workers, max_pixels
        # fork: workers start in milliseconds and need no `if __name__ == "__main__"` guard in the
        # caller's script. They run only this module's parsers and Pillow, never a library whose
        # threads (pyarrow's, torch's) may have held a lock at fork time.
        self.context = multiprocessing.get_context("fork")
        self.executor = self._start() if workers > 1 else None

    def _start(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(self.workers, mp_context=self.context)
        executor.submit(int).result()  # start the workers now, before the pyarrow import thread
        return executor

    def submit(self, items: list[tuple[str, int, int]]) -> Future | list:
        if self.executor is None or not items:
            return _probe_many(items, self.max_pixels)
        return self.executor.submit(_probe_many, items, self.max_pixels)

    def result(self, job: Future | list, items: list[tuple[str, int, int]]) -> list:
        from concurrent.futures.process import BrokenProcessPool

        if isinstance(job, list):
            return job
        try:
            return job.result()
        except BrokenProcessPool:  # a C library crashed on some file: find it, one file per task
            out = []
            for item in items:
                self._restart_if_broken()
                try:
                    out.extend(self.executor.submit(_probe_many, [item], self.max_pixels).result())
                except BrokenProcessPool:
                    out.append((None, None, Probe(None, None, None, "error", "the scanner process crashed reading this file")))
            return out

    def _restart_if_broken(self) -> None:
        if getattr(self.executor, "_broken", False):
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = self._start()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def scan(
    roots: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    all_files: bool = False,
    progress: bool | None = None,
    list_first: int = 20,
) -> ScanSummary:
    """Scan files and folders into the Parquet index ``out``, reusing its unchanged rows.

    Args:
        roots: image files (any extension) and folders (walked; files with
            :data:`IMAGE_EXTENSIONS`, or every file with ``all_files``).
        max_pixels: images with more pixels get status ``too_large``.
        workers: processes probing files (default: every core); 1 probes in this process.
        progress: a tqdm bar on stderr (default: when stderr is a terminal).
        list_first: how many problems to keep in ``ScanSummary.first_problems``.
    """
    start = time.perf_counter()
    if not roots:
        raise ValueError("scan: expected at least one file or folder to scan, got none")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"scan: --max-pixels must be a positive integer, got {max_pixels!r}")
    paths = sorted({os.path.abspath(r) for r in roots})
    for p in paths:
        if not os.path.exists(p):
            raise ValueError(f"scan: expected an existing file or folder, found nothing at {p}: check the PATH arguments")
    nested = lambda p, q: p != q and (q == os.path.dirname(q) or p.startswith(q.rstrip(os.sep) + os.sep))  # noqa: E731
    paths = [p for p in paths if not any(nested(p, q) for q in paths)]
    out = Path(os.path.abspath(out))
    if out.is_dir():
        raise ValueError(f"scan: --out must be a Parquet file path, found a folder at {out}: add a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # per process: concurrent rescans never share it
    pool = _Pool(workers or len(os.sched_getaffinity(0)), max_pixels)
    importer = threading.Thread(target=_import_pyarrow, daemon=True)
    importer.start()
    summary = ScanSummary(out)
    walk = _Walk(paths, str(out.parent), all_files, {str(out), str(tmp)})
    writer, buffer = None, {c: [] for c in COLUMNS}
    prior = None
    bar = None
    if progress or (progress is None and sys.stderr.isatty()):
        from tqdm import tqdm

        bar = tqdm(unit=" files", desc="scan", file=sys.stderr, dynamic_ncols=True)
    try:
        if out.exists():
            importer.join()
            import pyarrow.parquet as pq

            settings = _check_index(pq.read_schema(out), out)
            wanted = {"max_pixels": max_pixels, "parser": PARSER_VERSION}
            if settings == wanted:
                prior = _Prior(out)
            else:
                summary.full_rescan = f"settings changed from {settings} to {wanted}: every file is probed again"

        def flush(final: bool) -> None:
            nonlocal writer
            if len(buffer["path"]) < _ROW_GROUP and not final:
                return
            importer.join()
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = _schema(max_pixels)
            if writer is None:
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            writer.write_table(pa.Table.from_pydict(buffer, schema=schema))
            for column in buffer.values():
                column.clear()

        def finish(plan: list, job: Any, items: list[tuple[str, int, int]]) -> None:
            results = iter(pool.result(job, items))
            for entry, old in plan:
                if entry.status is not None:  # known from the walk: nothing to probe
                    row = (entry.rel, None, None, None, None, None, entry.status, entry.reason)
                    count = "new" if old is None else "changed"
                else:
                    nbytes, mtime, p = next(results)
                    if p is None:
                        row, count = old, "unchanged"
                    else:
                        row = (entry.rel, p.height, p.width, p.format, nbytes, mtime, p.status, p.reason)
                        count = "new" if old is None else "changed"
                setattr(summary, count, getattr(summary, count) + 1)
                for column, value in zip(COLUMNS, row):
                    buffer[column].append(value)
                if row[6] != "ok":
                    summary.problems[row[6]] += 1
                    if len(summary.first_problems) < list_first:
                        summary.first_problems.append((entry.path, row[6], row[7]))
            summary.found += len(plan)
            if bar is not None:
                bar.update(len(plan))
            flush(False)

        pending: collections.deque = collections.deque()

        def submit(chunk: list[_Entry]) -> None:
            plan, items = [], []
            for entry in chunk:
                old = prior.take(_key(entry.rel)) if prior is not None else None
                plan.append((entry, old))
                if entry.status is None:
                    reusable = old is not None and old[4] is not None and old[6] not in RETRY_STATUSES
                    items.append((entry.path, old[4], old[5]) if reusable else (entry.path, -1, -1))
            pending.append((plan, pool.submit(items), items))
            while len(pending) > 2 * pool.workers:
                finish(*pending.popleft())

        chunk: list[_Entry] = []
        for entry in walk:
            chunk.append(entry)
            if len(chunk) == _CHUNK:
                submit(chunk)
                chunk = []
        submit(chunk)
        while pending:
            finish(*pending.popleft())
        if prior is not None:
            prior.finish()
            summary.removed = prior.removed
        flush(True)
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        pool.close()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    summary.ignored, summary.unreadable_folders = walk.ignored, walk.unreadable_folders
    summary.seconds = time.perf_counter() - start
    return summary


def read_index(path: str | os.PathLike, *, usable: bool | None = None, columns: Sequence[str] | None = None) -> Any:
    """The index as a ``pyarrow.Table`` with absolute paths.

    Args:
        usable: True keeps the ``ok`` rows, False the problems, None every row.
        columns: subset of :data:`COLUMNS` to return (default all).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"expected an index written by `microcond scan --out`, found no file at {path}")
    _check_index(pq.read_schema(path), path)
    columns = list(columns or COLUMNS)
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise ValueError(f"read_index: expected columns among {COLUMNS}, got {unknown}")
    table = pq.read_table(path, columns=sorted(set(columns) | {"status"}, key=COLUMNS.index))
    if usable is not None:
        is_ok = pc.equal(table["status"], "ok")
        table = table.filter(is_ok if usable else pc.invert(is_ok))
    if "path" in columns:
        base = os.path.abspath(path.parent)
        rel = table["path"]
        if pc.any(pc.starts_with(rel, "../")).as_py():
            absolute = pa.array([os.path.normpath(os.path.join(base, p)) for p in rel.to_pylist()], pa.string())
        else:
            absolute = pc.binary_join_element_wise(base.rstrip(os.sep), rel, os.sep)
        table = table.set_column(table.schema.get_field_index("path"), "path", absolute)
    return table.select(columns)
