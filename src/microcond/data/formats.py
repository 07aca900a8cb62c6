"""Fast header parsers for JPEG, PNG, GIF, WebP, BMP and TIFF: size, mode and orientation from a
few KiB read with ``pread``, without decoding pixels (:mod:`microcond.data.headers` runs them).

A parser raises :class:`Fallback` when it meets something unusual (Pillow then decides) and
:class:`HeaderProblem` for a file that is truncated or corrupt in a way it can name.
"""

from __future__ import annotations

import os
import re
import zlib
from struct import unpack_from
from typing import NamedTuple

TAIL = 4096
_HEAD = 16384
SWAP_ORIENTATIONS = frozenset({5, 6, 7, 8})  # transpose/rotate 90: (h, w) -> (w, h)
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # Pillow Image.getexif
_XMP_JPEG = b"http://ns.adobe.com/xap/1.0/\x00"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PNG_META = (b"Raw profile type exif", b"XML:com.adobe.xmp")  # text chunks Pillow reads EXIF from
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_SKIP = frozenset({0xC4, 0xCC, 0xDB, 0xDD, 0xFE} | set(range(0xE0, 0xF0)))


class Header(NamedTuple):
    height: int
    width: int
    format: str
    mode: str | None  # None: a mode the fast parser knows is accepted
    orientation: int
    problem: tuple[str, str] | None  # found after the size, e.g. a missing end marker


class Fallback(Exception):
    """The fast parser met something unusual: let Pillow decide."""


class HeaderProblem(Exception):
    def __init__(self, status: str, reason: str, size: tuple[int, int] | None = None, fmt: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.size, self.format = status, reason, size, fmt


class File:
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
    """Orientation tag of IFD0 in a TIFF/EXIF block; None when absent; Fallback when odd."""
    if data.startswith(b"Exif\x00\x00"):
        data = data[6:]
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8:
        raise Fallback
    (ifd,) = unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        raise Fallback
    (count,) = unpack_from(order + "H", data, ifd)
    if ifd + 2 + 12 * count > len(data):
        raise Fallback
    for i in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind, n = unpack_from(order + "HHI", data, i)
        if tag == 0x0112:
            if kind != 3 or n != 1:
                raise Fallback
            return unpack_from(order + "H", data, i + 8)[0]
    return None


def _xmp_orientation(xmp: bytes | None) -> int | None:
    match = _XMP_ORIENTATION.search(xmp) if xmp else None
    return int(match[2]) if match else None


def _jpeg(f: File) -> Header:
    """JPEG: SOFn size, APP1 EXIF/XMP orientation, EOI in the tail (as Pillow's JpegImagePlugin)."""
    pos, sof, exif, xmp = 2, None, None, None
    while True:
        b = f.at(pos, 4)
        if len(b) < 4:
            raise HeaderProblem("truncated", "JPEG ends inside its header (no start-of-scan marker)")
        if b[0] != 0xFF:
            raise Fallback
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
            raise Fallback
        pos += 2 + length
    if sof is None or len(sof) < 6:
        raise Fallback
    bits, h, w, layers = sof[0], sof[1] << 8 | sof[2], sof[3] << 8 | sof[4], sof[5]
    if h == 0 or w == 0:
        raise Fallback  # height from a DNL marker, or invalid: Pillow decides
    if bits != 8 or layers not in (1, 3, 4):
        raise HeaderProblem("bad_mode", f"JPEG with {bits}-bit samples and {layers} components: Pillow decodes "
                       "8-bit JPEG with 1, 3 or 4 components only", (h, w), "JPEG")
    orientation = _tiff_orientation(exif) if exif is not None else None
    if orientation is None:
        orientation = _xmp_orientation(xmp)
    problem = None
    if b"\xff\xd9" not in f.tail():
        problem = ("truncated", "no JPEG end marker (EOI) in the last 4 KiB: truncated, or data appended")
    return Header(h, w, "JPEG", None, orientation or 1, problem)


def _png(f: File) -> Header:
    """PNG: IHDR size; EXIF/XMP chunks send the file to Pillow; IEND in the tail."""
    ihdr = f.at(8, 25)
    if len(ihdr) < 25:
        raise HeaderProblem("truncated", "PNG ends inside its IHDR chunk")
    if ihdr[4:8] != b"IHDR":
        raise Fallback
    if zlib.crc32(ihdr[4:21]) != unpack_from(">I", ihdr, 21)[0]:  # CRC of chunk type and data
        raise HeaderProblem("bad_header", "PNG IHDR chunk fails its CRC check: the header is corrupt", None, "PNG")
    w, h = unpack_from(">II", ihdr, 8)
    if h == 0 or w == 0:
        raise Fallback
    pos = 33
    while True:  # chunks before the image data, where Pillow reads metadata at open
        b = f.at(pos, 8)
        if len(b) < 8:
            raise HeaderProblem("truncated", "PNG ends before its image data (IDAT)", (h, w), "PNG")
        (length,) = unpack_from(">I", b, 0)
        kind = b[4:8]
        if kind == b"IDAT":
            break
        if kind == b"eXIf" or (kind in (b"tEXt", b"zTXt", b"iTXt") and f.at(pos + 8, 22).startswith(_PNG_META)):
            raise Fallback
        pos += 12 + length
    tail = f.tail()
    if b"eXIf" in tail or any(key in tail for key in _PNG_META):
        raise Fallback
    problem = None if _PNG_IEND in tail else ("truncated", "no PNG IEND chunk in the last 4 KiB")
    return Header(h, w, "PNG", None, 1, problem)


def _gif(f: File) -> Header:
    """GIF: logical screen, enlarged by the first frame's extent (as Pillow); trailer at the end."""
    head = f.at(0, 13)
    if len(head) < 13:
        raise HeaderProblem("truncated", "GIF ends inside its header")
    w, h = unpack_from("<HH", head, 6)
    flags = head[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while True:
        b = f.at(pos, 10)
        if not b:
            raise HeaderProblem("truncated", "GIF ends before its first frame", None, "GIF")
        if b[0] == 0x21:  # extension: label, then sub-blocks until a zero length
            pos += 2
            while (n := f.at(pos, 1)) and n[0]:
                pos += 1 + n[0]
            if not n:
                raise HeaderProblem("truncated", "GIF ends inside an extension block", None, "GIF")
            pos += 1
        elif b[0] == 0x2C and len(b) == 10:
            x, y, fw, fh = unpack_from("<HHHH", b, 1)
            w, h = max(w, x + fw), max(h, y + fh)
            break
        else:
            raise Fallback
    if h == 0 or w == 0:
        raise Fallback
    problem = None if f.tail().rstrip(b"\x00").endswith(b";") else ("truncated", "no GIF trailer at the end")
    return Header(h, w, "GIF", None, 1, problem)


def webp(f: File) -> Header:
    """WebP: canvas size from VP8X/VP8/VP8L (as Pillow's _get_size); EXIF/XMP chunks of VP8X."""
    head = f.at(0, 30)
    if len(head) < 30:
        raise HeaderProblem("truncated", "WebP ends inside its header")
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
                    raise Fallback
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
        raise Fallback
    if h == 0 or w == 0:
        raise Fallback
    problem = None if f.size >= riff_end else ("truncated", f"WebP is {f.size} bytes, its RIFF header says {riff_end}")
    return Header(h, w, "WEBP", None, orientation, problem)


def _bmp(f: File) -> Header:
    """BMP: uncompressed 1/4/8/24/32-bit with a Windows header; anything else goes to Pillow."""
    head = f.at(0, 34)
    if len(head) < 34:
        raise HeaderProblem("truncated", "BMP ends inside its header")
    offset, header_size, w, h, _, bits, compression = unpack_from("<IIiiHHI", head, 10)
    if header_size not in (40, 108, 124) or compression != 0 or bits not in (1, 4, 8, 24, 32) or w <= 0 or h == 0:
        raise Fallback
    h = abs(h)  # negative height: rows stored top-down
    need = offset + (w * bits + 31) // 32 * 4 * h
    problem = None if f.size >= need else ("truncated", f"BMP is {f.size} bytes, its pixel array ends at {need}")
    return Header(h, w, "BMP", None, 1, problem)


# TIFF layouts read here (photometric, samples per pixel, bits per sample); others go to Pillow.
_TIFF_LAYOUTS = frozenset({(0, 1, 1), (1, 1, 1), (0, 1, 8), (1, 1, 8), (2, 3, 8), (2, 4, 8), (3, 1, 8), (5, 4, 8)})
_TIFF_COMPRESSIONS = frozenset({1, 5, 7, 8, 32773, 32946})  # raw, LZW, JPEG, deflate, packbits
_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG


def _tiff(f: File) -> Header:
    """Classic TIFF, first IFD: size, orientation (Pillow reports the oriented size), strip ends."""
    order = "<" if f.at(0, 2) == b"II" else ">"
    (ifd,) = unpack_from(order + "I", f.at(4, 4).rjust(4, b"\0"))
    raw = f.at(ifd, 2)
    if len(raw) < 2:
        raise HeaderProblem("truncated", "TIFF ends before its first image directory")
    (count,) = unpack_from(order + "H", raw)
    entries = f.at(ifd + 2, 12 * count)
    if len(entries) < 12 * count:
        raise HeaderProblem("truncated", "TIFF ends inside its first image directory")
    tags: dict[int, tuple[int, ...]] = {}
    for i in range(0, 12 * count, 12):
        tag, kind, n = unpack_from(order + "HHI", entries, i)
        if kind not in _TIFF_TYPES:
            continue  # rationals, strings: not needed here
        code, size = _TIFF_TYPES[kind]
        data = entries[i + 8 : i + 12] if n * size <= 4 else f.at(unpack_from(order + "I", entries, i + 8)[0], n * size)
        if len(data) < n * size:
            raise Fallback
        tags[tag] = unpack_from(f"{order}{n}{code}", data)
    try:
        w, h = tags[256][0], tags[257][0]
        layout = (tags[262][0], tags.get(277, (1,))[0], max(tags.get(258, (1,))))
        offsets, counts = tags[273], tags[279]
    except (KeyError, IndexError):
        raise Fallback from None
    if (h == 0 or w == 0 or layout not in _TIFF_LAYOUTS or tags.get(259, (1,))[0] not in _TIFF_COMPRESSIONS
            or tags.get(284, (1,))[0] != 1 or max(tags.get(339, (1,))) != 1 or len(offsets) != len(counts)):
        raise Fallback
    end = max(o + c for o, c in zip(offsets, counts))
    problem = None if f.size >= end else ("truncated", f"TIFF is {f.size} bytes, its image data ends at {end}")
    return Header(h, w, "TIFF", None, tags.get(274, (1,))[0], problem)


PARSERS = (
    (b"\xff\xd8\xff", _jpeg), (b"\x89PNG\r\n\x1a\n", _png), (b"GIF87a", _gif), (b"GIF89a", _gif), (b"BM", _bmp),
    (b"II*\x00", _tiff), (b"MM\x00*", _tiff),
)  # fmt: skip
