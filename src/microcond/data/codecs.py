"""What a file's compression leaves in its pixels, read from its header: the period of its block
pattern and the size of its quantization noise, for :mod:`microcond.data.gridfit`.

JPEG quantizes 8x8 blocks of DCT coefficients with tables stored in the file, from which the IJG
quality and the noise follow. Lossy WebP (VP8) transforms 4x4 blocks inside 16x16 macroblocks and
smooths their edges with its loop filter: its pattern repeats every 16 px (its strongest
frequencies are the multiples of 1/4, then those of 1/16). Its quantizer sits in the bool-coded
frame header and is not read: its noise is taken as that of a JPEG at :data:`WEBP_AS_JPEG`
(WebP's usual qualities, 75-90). Lossless WebP (VP8L), PNG and the others leave only 8-bit rounding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image

# IJG (libjpeg) base tables at quality 50, natural order (ITU-T T.81 Annex K).
_IJG = (np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                  14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                  49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]),
        np.array([17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + [47, 66]
                 + [99] * 38))  # fmt: skip
WEBP_AS_JPEG = 80  # the JPEG quality whose noise a lossy WebP is assumed to have (its quantizer is not read)
JPEG_BLOCK_GAIN, JPEG_BLOCK_GAIN_UNTIL = 1.5, 75  # a JPEG's block gain (Codec) down to this quality; more below


def ijg_table(quality: int | np.ndarray, table: int) -> np.ndarray:
    """libjpeg's quantization table (0: luma, 1: chroma) at ``quality``, as jcparam.c scales it."""
    scale = np.where(quality < 50, 5000 // quality, 200 - 2 * quality)
    return np.clip((_IJG[table] * scale + 50) // 100, 1, 255)


@dataclass(frozen=True)
class Codec:
    """``block``: period in pixels of the compression's block pattern (0: none); ``noise``: RMS
    quantization error of the luma in grey levels (0 for lossless files); ``block_gain``: how much
    better than itself shifted a grid whose pattern repeats with the blocks must fit (both axes'
    gains multiplied): smooth content that the codec kept few coefficients of fits such grids.
    Measured on 105 native photographs: at most 1.41 as JPEG at quality 70-95, 2.11 at 40-74
    (7 of 105 above 1.5, none above the noise-scaled gain of :func:`jpeg`), 2.13 as lossy WebP
    (1.96 for a smooth synthetic texture); lossy WebP upscales by such factors kept: 43 of 105 at
    2.2 (58 at 1.8, 39 at 2.5): a native called upscaled is the worse mistake."""

    name: str
    block: int = 0
    noise: float = 0.0
    block_gain: float = 1.0

    @property
    def lossy(self) -> bool:
        return self.block > 0

    def aligned_with_blocks(self, s: float) -> bool:
        """Whether the pattern of an upscale by ``s`` repeats with the blocks (within 0.1 px)."""
        return self.block > 0 and abs(self.block / s - round(self.block / s)) * s < 0.1

    @property
    def hidden(self) -> tuple[float, ...]:
        """Upscaling factors whose periodicity falls on the block pattern's own frequencies (k /
        block, ignored): ``block / k`` and ``block / (block - k)``, 1.2 to 8 (JPEG: 4/3, 1.6, 2,
        8/3, 4, 8; an upscale by 4/3 is common)."""
        return tuple(sorted({s for k in range(1, self.block // 2 + 1) for s in (self.block / k, self.block / (self.block - k)) if 1.2 <= s <= 8}))


LOSSLESS = Codec("lossless")


def _jpeg_noise(quality: int) -> float:
    """The RMS error of the uniform quantizers of libjpeg's luma table at ``quality``."""
    return float(np.sqrt((ijg_table(quality, 0) ** 2).mean() / 12))


def jpeg(quality: int) -> Codec:
    """A JPEG at IJG ``quality``: 8-px blocks, its luma table's noise, and a block gain of
    :data:`JPEG_BLOCK_GAIN` that grows with the noise below quality :data:`JPEG_BLOCK_GAIN_UNTIL`
    (coarser quantization leaves more of the blocks in smooth content)."""
    noise = _jpeg_noise(quality)
    return Codec("jpeg", 8, noise, JPEG_BLOCK_GAIN * max(1.0, noise / _jpeg_noise(JPEG_BLOCK_GAIN_UNTIL)))


WEBP_LOSSY = Codec("webp", 16, jpeg(WEBP_AS_JPEG).noise, 2.2)


def jpeg_quality(image: Image.Image) -> int | None:
    """The IJG quality (1-100) whose scaled standard tables are nearest to this JPEG's; header only."""
    tables = getattr(image, "quantization", None) if image.format == "JPEG" else None
    if not tables:
        return None
    found = [np.asarray(tables[i], np.float64) for i in sorted(tables)[:2]]
    qualities = np.arange(1, 101)
    error = np.zeros(len(qualities))
    for i, table in enumerate(found):
        scaled = ijg_table(qualities[:, None], i)  # (100, 64)
        error += np.abs(np.log(scaled / np.maximum(table[None, :], 1))).mean(axis=1)
    return int(qualities[np.argmin(error)])


def _webp_lossy(fp: BinaryIO) -> bool:
    """Whether a WebP's (first) image is VP8, lossy, rather than VP8L: its chunks walked from the
    RIFF header (an animation's first ANMF frame looked into)."""
    fp.seek(12)
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return False
        kind, length = head[:4], struct.unpack("<I", head[4:])[0]
        if kind in (b"VP8 ", b"VP8L"):
            return kind == b"VP8 "
        if kind == b"ANMF":
            fp.seek(16, 1)  # the frame's offset, size, duration and flags; its image chunks follow
            continue
        fp.seek(length + (length & 1), 1)


def codec(image: Image.Image, quality: int | None) -> Codec:
    """The codec of an opened, not yet decoded image (its ``fp`` is read from and left moved)."""
    if quality is not None:
        return jpeg(quality)
    if image.format == "WEBP" and _webp_lossy(image.fp):
        return WEBP_LOSSY
    return LOSSLESS
