"""Emoji from the installed font and Unicode's catalogue: the raw material of the demo data.

The colour bitmaps of the Noto Color Emoji font (``fonts-noto-color-emoji``; Pillow renders them
only at their strike sizes, with ``embedded_color=True``, and lays out multi-codepoint sequences
with raqm) and the labels of ``emoji-test.txt`` (``unicode-data``). Nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

FONT_PATHS = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",)
EMOJI_TEST_PATHS = ("/usr/share/unicode/emoji/emoji-test.txt",)
FONT_STRIKES = (109, 160, 136, 128, 96, 72, 64)  # bitmap fonts load only at their strike sizes
SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))


@dataclass(frozen=True)
class Emoji:
    """One emoji of ``emoji-test.txt``: its text, name and labels."""

    text: str
    name: str
    group: str
    subgroup: str
    codepoints: str  # e.g. "1F468 200D 1F469", as in emoji-test.txt


def _existing(given: str | None, defaults: tuple[str, ...], what: str, fix: str) -> Path:
    candidates = (given,) if given else defaults
    for c in candidates:
        if Path(c).is_file():
            return Path(c)
    raise ValueError(f"{what} not found (looked at {', '.join(candidates)}): {fix}")


def find_font(path: str | None = None) -> Path:
    """The colour emoji font to render from, or a ``ValueError`` saying how to get one."""
    return _existing(
        path, FONT_PATHS, "colour emoji font",
        "install it with `sudo apt-get install fonts-noto-color-emoji` (or bash scripts/setup.sh), "
        "or pass --font PATH to another colour emoji font",
    )


def find_emoji_test(path: str | None = None) -> Path:
    """The ``emoji-test.txt`` label file, or a ``ValueError`` saying how to get one."""
    return _existing(
        path, EMOJI_TEST_PATHS, "emoji-test.txt",
        "install it with `sudo apt-get install unicode-data` (or bash scripts/setup.sh), "
        "or pass --emoji-test PATH",
    )


_LINE = re.compile(r"^([0-9A-F ]+);\s*([a-z-]+)\s*#\s*\S+\s+E\d+\.\d+\s+(.+)$")


def load_catalogue(path: str | Path) -> list[Emoji]:
    """Fully-qualified emoji of ``emoji-test.txt`` without skin tones and the Component group."""
    group = subgroup = ""
    emoji = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif (m := _LINE.match(line)) and m.group(2) == "fully-qualified" and group != "Component":
            points = [int(c, 16) for c in m.group(1).split()]
            if SKIN_TONES.isdisjoint(points):
                text = "".join(map(chr, points))
                emoji.append(Emoji(text, m.group(3).strip(), group, subgroup, m.group(1).strip()))
    if len({e.group for e in emoji}) < 2:
        raise ValueError(f"{path} holds no emoji groups; expected Unicode's emoji-test.txt format")
    return emoji


@functools.lru_cache(maxsize=4)
def load_font(path: str) -> ImageFont.FreeTypeFont:
    """The font at its first loadable bitmap strike size, laid out with raqm."""
    if not features.check("raqm"):
        raise ValueError("Pillow's raqm layout is unavailable: install it with "
                         "`sudo apt-get install libraqm0 libfribidi0` (or bash scripts/setup.sh)")
    for size in FONT_STRIKES:
        try:
            return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.RAQM)
        except OSError:
            continue
    raise ValueError(f"cannot load {path} at any of the sizes {FONT_STRIKES}: pass --font PATH to a colour emoji font")


@functools.lru_cache(maxsize=128)  # per process at most 128 glyphs of 136x128 RGBA: about 9 MB
def render_glyph(font_path: str, text: str) -> Image.Image | None:
    """The emoji tightly cropped to its alpha, RGBA; None if the font has no single glyph for it."""
    font = load_font(font_path)
    single = font.getlength("\U0001F600")
    if font.getlength(text) > 1.5 * single:  # raqm fell back to one glyph per codepoint
        return None
    size = math.ceil(single) + 40
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((20, 10), text, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    return canvas.crop(box) if box else None


def check_colour_font(font_path: str) -> None:
    """Raise ``ValueError`` unless the font draws a colour 'grinning face'."""
    glyph = render_glyph(font_path, "\U0001F600")
    rgb = np.asarray(glyph.convert("RGB"), dtype=np.int16) if glyph else None
    if rgb is None or np.abs(rgb - rgb[..., :1]).max() < 32:
        raise ValueError(f"{font_path} draws no colour emoji: pass --font PATH to a colour emoji "
                         "font, or install one with `sudo apt-get install fonts-noto-color-emoji`")


def glyph_digest(task: tuple[str, str]) -> str | None:
    glyph = render_glyph(*task)
    return hashlib.sha1(glyph.tobytes() + str(glyph.size).encode()).hexdigest() if glyph else None
