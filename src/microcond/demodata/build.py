"""Demo data: real emoji images with web-like sizes and shapes, built offline from Debian packages.

Source: the colour bitmaps of the Noto Color Emoji font (``fonts-noto-color-emoji``; Pillow
renders them only at size 109, with ``embedded_color=True``, and lays out multi-codepoint
sequences with raqm) and the labels of ``emoji-test.txt`` (``unicode-data``). Only
fully-qualified emoji outside the "Component" group are used; skin-tone variants and glyphs whose
pixels repeat another's (a few flags, one family) are dropped, leaving about 1,860 distinct images.

Each sample mimics web data as the SDXL paper's Fig. 2 describes it: one emoji, whole, near the
centre with jitter, filling 55-80 % of the short side of a canvas of aspect 1:2 to 2:1 (a share
square) on a background from ``PALETTE``; the canvas is then downscaled (area averaging, so no
ringing reaches the margin) to an "original size" whose short edge is log-normal, tuned so that
``share_below`` of the training images are smaller than ``train_size``. The glyph is never
upscaled: an original cannot be larger than the canvas at the font's native resolution, so draws
above it are capped there and the tail stops at about 130-230 px on the short edge (up to about
twice that on the long edge). The evaluation split uses other emoji (about 15 % of each group,
chosen by a seeded hash) at full resolution, saved as PNG; training images are PNG or JPEG.

Every random choice derives from ``(seed, split, sample index)``, so the bytes do not depend on
``jobs``. Layout: ``DIR/{train,eval}/<index>.{png,jpg}``, ``DIR/{train,eval}/metadata.jsonl``,
``DIR/classes.json`` and ``DIR/demo-data.json`` (parameters and size summary).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool
from multiprocessing.pool import ThreadPool
from pathlib import Path
from statistics import NormalDist
from typing import Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from microcond.demodata.emoji import (  # noqa: F401 (SKIN_TONES, find_*: part of the demo data's API)
    SKIN_TONES,
    Emoji,
    check_colour_font,
    find_emoji_test,
    find_font,
    glyph_digest,
    load_catalogue,
    render_glyph,
)

# Backgrounds chosen for contrast with emoji: the share of opaque Noto emoji pixels within 20
# levels (max over RGB) of each colour is 0.1-0.7 %; light grey and white reach 8-9 %.
PALETTE = (
    (222, 212, 246),  # lavender
    (200, 236, 214),  # mint
    (170, 205, 235),  # sky blue
    (225, 170, 185),  # rose
    (120, 140, 170),  # steel
    (40, 110, 120),  # teal
)
SPLITS = ("train", "eval")
MIN_MARGIN_PX = 1.5  # least margin in SAVED pixels: area averaging smears the object by up to 1 px


# Shapes of non-square originals. "web" spreads them over 1:2..2:1 like photos and screenshots;
# "extreme" makes every one 1:2 or 2:1, so that a 32 px crop of the resized image can cut up to
# half of it: the data on which crop conditioning has something to learn (paper Fig. 4).
ASPECT_MIXES = {"web", "extreme", "wide"}


@dataclass(frozen=True)
class DemoDataConfig:
    """Parameters of the demo data set (CLI flags of ``microcond demo-data``)."""

    out: str
    seed: int = 0
    n_train: int = 6000
    n_eval: int = 1000
    train_size: int = 32
    share_below: float = 0.40  # share of training originals with a short edge below train_size
    size_sigma: float = 0.9  # log-normal sigma of the original short edge
    min_size: int = 8  # smallest original short edge
    square_share: float = 0.25
    aspect_mix: str = "web"  # non-square originals: "web" log-uniform 1:2..2:1 | "extreme" only 1:2 or 2:1 | "wide" only 2:1
    fill: tuple[float, float] = (0.55, 0.80)  # object extent / canvas short side
    margin: float = 0.08  # least free border, as a share of the canvas short side
    jitter: float = 0.15  # largest shift of the object from the centre, share of the side
    jpeg_share: float = 0.5
    jpeg_quality: tuple[int, int] = (75, 95)
    eval_share: float = 0.15  # share of distinct emoji, per group, held out for evaluation
    emoji_per_class: int = 0  # training emoji kept per class (group), chosen by seeded hash; 0 = all
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    font: str | None = None
    emoji_test: str | None = None
    preview: bool = True

    def __post_init__(self) -> None:
        from microcond.base.settings import out_of_range

        for name, expected in out_of_range(self):
            raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}: change --{name.replace('_', '-')}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}: change --seed")
        if not 0.0 <= self.square_share <= 1.0:
            raise ValueError(f"square_share must lie in [0, 1], got {self.square_share}: change --square-share")
        for name in ("n_train", "n_eval", "train_size", "min_size", "jobs"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}: change {flag}")
        if self.train_size <= self.min_size:
            raise ValueError(f"train_size must exceed the smallest original ({self.min_size} px), "
                             f"got {self.train_size}: change --train-size")
        if not 0.0 < self.share_below < 1.0:
            raise ValueError(f"share_below must lie strictly between 0 and 1, got {self.share_below}")
        if self.aspect_mix not in ASPECT_MIXES:
            raise ValueError(f"aspect_mix must be one of {sorted(ASPECT_MIXES)}, got {self.aspect_mix!r}: change --aspect-mix")
        if self.emoji_per_class < 0:
            raise ValueError(f"emoji_per_class must be 0 (all) or a positive integer, got {self.emoji_per_class}: change --emoji-per-class")
        if not 0.0 < self.eval_share < 1.0:
            raise ValueError(f"eval_share must lie strictly between 0 and 1, got {self.eval_share}")


def _seeded_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def split_emoji(emoji: list[Emoji], seed: int, eval_share: float, per_class: int = 0) -> tuple[list[Emoji], list[Emoji]]:
    """Train and eval emoji: per group, the ``eval_share`` with the smallest seeded hash go to eval;
    of the rest, the first ``per_class`` (all when 0) train. The eval split is the same either way."""
    train, held_out = [], []
    for group in sorted({e.group for e in emoji}):
        members = sorted((e for e in emoji if e.group == group), key=lambda e: _seeded_key(seed, e.name))
        n_eval = min(len(members) - 1, max(1, round(eval_share * len(members))))
        held_out += members[:n_eval]
        train += members[n_eval:][: per_class or None]
    return train, held_out


def original_short_edge(rng: np.random.Generator, cfg: DemoDataConfig) -> float:
    """Draw a short edge from the log-normal with P(round(edge) < train_size) = share_below."""
    z = NormalDist().inv_cdf(cfg.share_below)
    median = (cfg.train_size - 0.5) * math.exp(-cfg.size_sigma * z)
    return float(math.exp(rng.normal(math.log(median), cfg.size_sigma)))


@dataclass(frozen=True)
class Plan:
    """Every random choice of one sample; sizes (h, w), positions (top, left)."""

    canvas_size: tuple[int, int]
    object_top_left: tuple[int, int]
    background: tuple[int, int, int]
    original_size: tuple[int, int]
    format: str
    quality: int | None


def _place(rng: np.random.Generator, side: int, extent: int, margin: float, jitter: float) -> int:
    """Offset of the object along one axis: centred, jittered, at least ``margin`` from both ends."""
    low, high = math.ceil(margin), math.floor(side - extent - margin)
    if high <= low:
        return (side - extent) // 2
    reach = min((high - low) / 2, jitter * side)
    shift = float(np.clip(rng.normal(0.0, 0.5), -1.0, 1.0))  # photographers centre their subject
    return int(round((low + high) / 2 + reach * shift))


def plan_sample(rng: np.random.Generator, glyph_size: tuple[int, int], cfg: DemoDataConfig,
                full_resolution: bool) -> Plan:
    """Draw canvas shape, object position, background, original size and file format."""
    gh, gw = glyph_size
    extent = max(gh, gw)
    fill = rng.uniform(*cfg.fill)
    if rng.random() < cfg.square_share:
        aspect = 1.0
    elif cfg.aspect_mix == "extreme":
        aspect = 2.0 if rng.random() < 0.5 else 0.5
    elif cfg.aspect_mix == "wide":
        rng.random()  # the same draws as "extreme", so both mixes share every other choice
        aspect = 2.0
    else:
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    edge = original_short_edge(rng, cfg)
    background = PALETTE[int(rng.integers(len(PALETTE)))]
    jpeg = rng.random() < cfg.jpeg_share
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    short = max(extent, round(extent / fill))
    out_short = short if full_resolution else int(min(short, max(cfg.min_size, round(edge))))  # never upscale
    # The margin must also leave whole background pixels after downscaling: a small original gets
    # a lower fill, i.e. a larger canvas around the same glyph.
    margin = max(cfg.margin, MIN_MARGIN_PX / out_short)
    short = max(short, math.ceil(extent / (1 - 2 * margin)))
    h, w = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)
    top = _place(rng, h, gh, margin * short, cfg.jitter)
    left = _place(rng, w, gw, margin * short, cfg.jitter)
    if full_resolution:
        return Plan((h, w), (top, left), background, (h, w), "PNG", None)
    scale = out_short / short
    original = (out_short, max(1, round(w * scale))) if h == short else (max(1, round(h * scale)), out_short)
    return Plan((h, w), (top, left), background, original, "JPEG" if jpeg else "PNG", quality if jpeg else None)


def render_sample(glyph: Image.Image, plan: Plan) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The RGB image of a plan and the object's box (top, left, bottom, right) in its pixels."""
    (h, w), (top, left) = plan.canvas_size, plan.object_top_left
    image = Image.new("RGB", (w, h), plan.background)
    image.paste(glyph.convert("RGB"), (left, top), glyph.getchannel("A"))
    alpha = Image.new("L", (w, h), 0)
    alpha.paste(glyph.getchannel("A"), (left, top))
    if plan.original_size != plan.canvas_size:
        size = plan.original_size[::-1]  # PIL wants (w, h)
        # Area averaging has no negative lobes, so nothing but the object leaves the box.
        image = image.resize(size, Image.Resampling.BOX)
        alpha = alpha.resize(size, Image.Resampling.BOX)
    x0, y0, x1, y1 = alpha.getbbox()
    return image, (y0, x0, y1, x1)


def _build_sample(task: tuple) -> dict:
    split, index, emoji, label, font_path, split_dir, cfg = task
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index])
    glyph = render_glyph(font_path, emoji.text)
    plan = plan_sample(rng, (glyph.height, glyph.width), cfg, full_resolution=split == "eval")
    image, box = render_sample(glyph, plan)
    name = f"{index:06d}." + ("jpg" if plan.format == "JPEG" else "png")
    buffer = io.BytesIO()
    image.save(buffer, plan.format, **({"quality": plan.quality} if plan.quality else {}))
    Path(split_dir, name).write_bytes(buffer.getvalue())
    return {
        "file": name, "name": emoji.name, "group": emoji.group, "subgroup": emoji.subgroup,
        "label": label, "codepoints": emoji.codepoints, "background": list(plan.background),
        "box": list(box), "original_size": list(plan.original_size), "format": plan.format,
        "jpeg_quality": plan.quality, "canvas_size": list(plan.canvas_size),
    }


def _spread(emoji: list[Emoji], n: int, seed: int) -> list[Emoji]:
    """n picks cycling evenly over a seeded order; equal picks are adjacent, for the glyph cache."""
    order = sorted(emoji, key=lambda e: _seeded_key(seed, "order:" + e.name))
    return [order[i * len(order) // n] for i in range(n)]


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / "demo-data.json").is_file():
            raise ValueError(f"output folder {out} is not empty and holds no demo-data.json: "
                             "pass --out with a new or empty folder")
        for split in SPLITS:  # a previous build: replace it
            shutil.rmtree(out / split, ignore_errors=True)
        for name in ("classes.json", "preview.png"):
            (out / name).unlink(missing_ok=True)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)


def summarize(records: list[dict], train_size: int) -> dict:
    """Counts, formats and the distribution of the original short edge of one split."""
    short = np.array([min(r["original_size"]) for r in records])
    formats, groups = Counter(r["format"] for r in records), Counter(r["group"] for r in records)
    return {
        "images": len(records),
        "distinct_emoji": len({r["name"] for r in records}),
        "share_short_edge_below_train_size": round(float((short < train_size).mean()), 4),
        "short_edge_percentiles": {str(p): float(np.percentile(short, p)) for p in (0, 10, 25, 50, 75, 90, 100)},
        "formats": dict(sorted(formats.items())),
        "groups": dict(sorted(groups.items())),
    }


def write_preview(split_dir: Path, records: list[dict], path: Path, n: int = 64, width: int = 1400) -> None:
    """A contact sheet of ``n`` evenly spaced samples at their own sizes on a neutral grey."""
    picks = [records[i * len(records) // n] for i in range(min(n, len(records)))]
    images = [Image.open(split_dir / r["file"]).convert("RGB") for r in picks]
    gap, x, y, row_h, places = 8, 8, 8, 0, []
    for im in images:
        if x + im.width + gap > width and x > gap:
            x, y, row_h = gap, y + row_h + gap, 0
        places.append((x, y))
        x, row_h = x + im.width + gap, max(row_h, im.height)
    sheet = Image.new("RGB", (width, y + row_h + gap), (128, 128, 128))
    for im, place in zip(images, places):
        sheet.paste(im, place)
    sheet.save(path)


def _tasks(split: str, emoji: list[Emoji], n: int, classes: list[str], font: str, out: Path,
           cfg: DemoDataConfig) -> Iterator[tuple]:
    for index, e in enumerate(_spread(emoji, n, cfg.seed)):
        yield split, index, e, classes.index(e.group), font, str(out / split), cfg


def build_demo_data(cfg: DemoDataConfig, progress: bool = True) -> dict:
    """Build the demo data set into ``cfg.out``; return what ``demo-data.json`` holds."""
    start = time.perf_counter()
    font = str(find_font(cfg.font))
    catalogue = load_catalogue(find_emoji_test(cfg.emoji_test))
    check_colour_font(font)
    out = Path(cfg.out)
    _prepare_out(out)
    (out / "demo-data.json").write_text(json.dumps({"status": "building", "config": asdict(cfg)}) + "\n")
    # One thread runs jobs=1 in this process, with the same pool interface.
    with Pool(cfg.jobs) if cfg.jobs > 1 else ThreadPool(1) as pool:
        digests = pool.map(glyph_digest, [(font, e.text) for e in catalogue], chunksize=64)
        skipped, first, distinct = [], {}, []
        for e, digest in zip(catalogue, digests):
            if digest is None:
                skipped.append({"name": e.name, "reason": "the font has no single glyph for it"})
            elif digest in first:
                skipped.append({"name": e.name, "reason": f"same pixels as {first[digest]!r}"})
            else:
                first[digest] = e.name
                distinct.append(e)
        classes = sorted({e.group for e in distinct})
        train, held_out = split_emoji(distinct, cfg.seed, cfg.eval_share, cfg.emoji_per_class)
        if not train or not held_out:
            raise ValueError(f"{font} draws only {len(distinct)} of the {len(catalogue)} emoji, too few to "
                             "split: pass --font PATH to a colour emoji font with emoji sequences")
        summary: dict = {}
        bar = tqdm(total=cfg.n_train + cfg.n_eval, desc="demo-data", unit="img", disable=not progress)
        for split, emoji, n in (("train", train, cfg.n_train), ("eval", held_out, cfg.n_eval)):
            records = []
            with open(out / split / "metadata.jsonl", "w", encoding="utf-8") as meta:
                for record in pool.imap(_build_sample, _tasks(split, emoji, n, classes, font, out, cfg), chunksize=16):
                    meta.write(json.dumps(record, ensure_ascii=False) + "\n")
                    records.append(record)
                    bar.update()
            summary[split] = summarize(records, cfg.train_size)
            if split == "train" and cfg.preview:
                write_preview(out / split, records, out / "preview.png")
        bar.close()
    (out / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    result = {"config": asdict(cfg), "font": font, "classes": classes, "distinct_emoji": len(distinct),
              "train_emoji": len(train), "eval_emoji": len(held_out), "skipped_emoji": skipped, "summary": summary}
    (out / "demo-data.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return result | {"seconds": round(time.perf_counter() - start, 1)}  # not in the file: bytes stay seeded


def describe(result: dict) -> str:
    """What ``microcond demo-data`` prints: where the data is, counts, sizes and formats."""
    cfg, out = result["config"], Path(result["config"]["out"])
    lines = [f"demo data in {out} ({result.get('seconds', '?')} s)"]
    for split in SPLITS:
        s = result["summary"][split]
        p = s["short_edge_percentiles"]
        formats = ", ".join(f"{k} {v}" for k, v in s["formats"].items())
        lines.append(
            f"  {split + ':':6} {s['images']} images of {s['distinct_emoji']} emoji; "
            f"{100 * s['share_short_edge_below_train_size']:.1f}% with a short edge below {cfg['train_size']} px; "
            f"short edge p10/p50/p90/max {p['10']:.0f}/{p['50']:.0f}/{p['90']:.0f}/{p['100']:.0f} px; {formats}"
        )
    lines.append(f"  labels: {len(result['classes'])} groups, in {out / 'classes.json'}; "
                 f"metadata in {out / 'train' / 'metadata.jsonl'} and {out / 'eval' / 'metadata.jsonl'}")
    if result["skipped_emoji"]:
        lines.append(f"  skipped {len(result['skipped_emoji'])} emoji (repeated pixels or no glyph), "
                     f"listed in {out / 'demo-data.json'}")
    if cfg["preview"]:
        lines.append(f"  contact sheet: {out / 'preview.png'}")
    lines.append(f"  size report: microcond scan {out / 'train'} --out {out / 'train-index.parquet'} && "
                 f"microcond report {out / 'train-index.parquet'} --out {out / 'report'} --min-edges 16 {cfg['train_size']} 64 128 256")
    return "\n".join(lines)

