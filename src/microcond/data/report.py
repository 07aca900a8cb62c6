"""Report: the paper's Fig. 2 for your own data, from a scan index.

SDXL (section 2.2, Fig. 2) shows how much of a training set a minimum-size filter throws away
(39% of their data below 256 px). :func:`write_report` answers the same for the usable rows of a
``microcond scan`` index, sizes ``(height, width)`` after EXIF orientation:

* ``sizes.png``: 2-D histogram of heights x widths, log axes and log colour;
* ``min_edge.png`` and a table: share of images and of pixels a filter "shorter edge < N px"
  discards, for N in :data:`MIN_EDGES`;
* ``aspect.png`` and a table: the aspect-ratio (width / height) distribution;
* ``buckets.png`` and a table: how a bucket set (``microcond.data.buckets``) would be filled, and
  how many images would be upscaled into their bucket (original smaller than the bucket);
* ``effective.png`` and a table, when the index was scanned with ``--effective``: file size against
  effective size (the size before any upscaling, :mod:`microcond.data.effective`) and the share of
  images upscaled by more than :data:`UPSCALED` on an axis.

Everything goes to ``DIR/report.md``; the tables are also returned as text. Numpy and matplotlib
only: no torch.
"""

from __future__ import annotations

import collections
import numbers
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from microcond.base.files import atomic_path, atomic_write_text
from microcond.data.buckets import assign_bucket, parse_buckets
from microcond.data.scan import read_index

MIN_EDGES = (64, 128, 256, 512, 1024)  # the filter thresholds of the table, in pixels
MAX_MIN_EDGE = 65536  # largest threshold accepted: JPEG sides end at 65535 px
PAPER_CUT = 256  # paper Fig. 2: discarding images below 256 px would drop 39% of SDXL's data
UPSCALED = 1.25  # file size / effective size above this on an axis: the file was upscaled
# Aspect classes (width / height), edges between them; names say what the shapes look like.
ASPECT_EDGES = (1 / 4, 1 / 2, 3 / 4, 4 / 3, 2, 4)
ASPECT_NAMES = ("taller than 1:4", "1:4 - 1:2", "1:2 - 3:4", "3:4 - 4:3 (near square)", "4:3 - 2:1", "2:1 - 4:1",
                "wider than 4:1")  # fmt: skip


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, readable as plain text too (columns padded)."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    # First column (names) left-aligned, the numbers right-aligned.
    line = lambda row: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |"] + [line(r) for r in cells[1:]])


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def min_edge_discards(heights: np.ndarray, widths: np.ndarray, edges: Sequence[int] = MIN_EDGES) -> list[tuple[int, int, float, float]]:
    """Per threshold N: (N, images discarded, share of images, share of pixels) for "shorter edge < N"."""
    short = np.minimum(heights, widths)
    pixels = heights.astype(np.float64) * widths
    total = pixels.sum()
    out = []
    for edge in edges:
        gone = short < edge
        out.append((edge, int(gone.sum()), float(gone.mean()) if len(short) else 0.0,
                    float(pixels[gone].sum() / total) if total else 0.0))
    return out


def bucket_fill(heights: np.ndarray, widths: np.ndarray, buckets: Sequence[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
    """Per bucket (h, w): (images assigned, of which upscaled: original shorter than the bucket on a side)."""
    fill: dict[tuple[int, int], list[int]] = {tuple(b): [0, 0] for b in buckets}
    if len(heights):
        sizes, counts = np.unique(np.stack([heights, widths], axis=1), axis=0, return_counts=True)
        for (h, w), n in zip(sizes.tolist(), counts.tolist()):  # one assignment per distinct size
            bucket = assign_bucket(h, w, buckets)
            fill[bucket][0] += n
            fill[bucket][1] += n if (h < bucket[0] or w < bucket[1]) else 0
    return {b: (n, up) for b, (n, up) in fill.items()}


def upscale_factors(heights: np.ndarray, widths: np.ndarray, effective_heights: np.ndarray, effective_widths: np.ndarray) -> np.ndarray:
    """Per image, the larger of file size / effective size over the two axes (1 = native)."""
    return np.maximum(heights / np.maximum(effective_heights, 1), widths / np.maximum(effective_widths, 1))


def _figure(width: float = 7.0, height: float = 5.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _log_histogram2d(x: np.ndarray, y: np.ndarray, lo: int, hi: int) -> tuple[Any, Any]:
    """(figure, axes) with a 2-D histogram of (x, y) in 60 log-spaced bins per axis from lo to hi,
    counts on a log colour scale, empty bins blank."""
    from matplotlib.colors import LogNorm

    edges = np.geomspace(lo, hi, 61)
    counts, _, _ = np.histogram2d(x, y, bins=[edges, edges])
    fig = _figure(6.6, 5.4)
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(edges, edges, np.ma.masked_equal(counts.T, 0), norm=LogNorm(), cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="images per bin (log scale)")
    return fig, ax


def _plot_sizes(path: Path, heights: np.ndarray, widths: np.ndarray, cut: int) -> None:
    lo = max(1, int(min(heights.min(), widths.min()) * 0.9))
    hi = int(max(heights.max(), widths.max()) * 1.1) + 1
    fig, ax = _log_histogram2d(widths, heights, lo, hi)
    ax.set(xscale="log", yscale="log", xlabel="original width (px, log scale)", ylabel="original height (px, log scale)",
           title=f"Original sizes of {len(heights):,} usable images")
    gone = float((np.minimum(heights, widths) < cut).mean())
    if lo < cut < hi:
        ax.axvline(cut, color="tab:red", ls="--", lw=1)
        ax.axhline(cut, color="tab:red", ls="--", lw=1)
        ax.text(0.98, 0.02, f"shorter edge < {cut} px (left of or below the dashed lines):\n"
                f"{100 * gone:.1f}% of the images, which a {cut} px minimum-size filter drops", transform=ax.transAxes,
                fontsize=8, color="tab:red", ha="right", zorder=5,
                bbox=dict(facecolor="white", alpha=0.9, edgecolor="tab:red", lw=0.5))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.6, ls=":")
    _pixel_ticks(ax, lo, hi)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


def _pixel_ticks(ax: Any, lo: float, hi: float) -> None:
    """Log axes ticked at powers of two: pixel sizes read better than 10^k."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    ticks = [2**k for k in range(0, 17) if lo <= 2**k <= hi]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FixedFormatter([str(t) for t in ticks]))
        axis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)


def _plot_min_edge(path: Path, heights: np.ndarray, widths: np.ndarray, edges: Sequence[int] = MIN_EDGES) -> None:
    short = np.minimum(heights, widths)
    grid = np.unique(np.geomspace(8, max(2048, short.max() * 1.2), 300).astype(int))
    rows = min_edge_discards(heights, widths, grid)
    fig = _figure(6.6, 4.2)
    ax = fig.add_subplot()
    ax.plot(grid, [100 * r[2] for r in rows], label="images", color="tab:blue")
    ax.plot(grid, [100 * r[3] for r in rows], label="pixels", color="tab:orange")
    for edge, _, img, pix in min_edge_discards(heights, widths, edges):
        ax.plot([edge], [100 * img], "o", color="tab:blue", ms=4)
        ax.annotate(f"{100 * img:.0f}%", (edge, 100 * img), textcoords="offset points", xytext=(5, -11), fontsize=8,
                    ha="left", color="tab:blue")
    ax.set(xscale="log", ylim=(-2, 105), xlabel="minimum shorter edge kept (px, log scale)",
           ylabel="discarded (%)", title="What a filter \"shorter edge < N px\" would discard")
    ax.set_xticks(list(edges), [str(e) for e in edges])
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


def _plot_aspect(path: Path, heights: np.ndarray, widths: np.ndarray) -> None:
    log_ratio = np.clip(np.log2(widths / heights), -3, 3)
    fig = _figure(6.6, 4.0)
    ax = fig.add_subplot()
    ax.hist(log_ratio, bins=np.linspace(-3, 3, 73), weights=np.full(len(log_ratio), 100 / len(log_ratio)), color="tab:blue")
    ticks = {"1:8": 1 / 8, "1:4": 1 / 4, "1:2": 1 / 2, "3:4": 3 / 4, "1:1": 1, "4:3": 4 / 3, "2:1": 2, "4:1": 4, "8:1": 8}
    ax.set_xticks(np.log2(list(ticks.values())), list(ticks))
    ax.set(xlabel="aspect ratio width:height (log scale; left: portrait, right: landscape; ends include beyond)",
           ylabel="images (%)", title="Aspect ratios")
    ax.grid(True, axis="y", alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


def _plot_buckets(path: Path, fill: dict[tuple[int, int], tuple[int, int]], spec: str) -> None:
    names = [f"{h}x{w}" for h, w in fill]
    total = np.array([n for n, _ in fill.values()])
    upscaled = np.array([u for _, u in fill.values()])
    fig = _figure(max(6.6, 0.2 * len(fill) + 2), 4.4)
    ax = fig.add_subplot()
    x = np.arange(len(fill))
    ax.bar(x, total - upscaled, color="tab:blue", label="original covers the bucket (downscaled)")
    ax.bar(x, upscaled, bottom=total - upscaled, color="tab:orange", label="original smaller than the bucket (upscaled)")
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set(xlabel="bucket height x width (px), from wide (landscape) to tall (portrait)", ylabel="images",
           title=f"Bucket fill ({spec}: {len(fill)} buckets)", ylim=(0, 1.3 * max(1, total.max())))
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, axis="y", alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


def _plot_effective(path: Path, long_edge: np.ndarray, effective_edge: np.ndarray, factors: np.ndarray) -> None:
    lo, hi = max(1, int(effective_edge.min() * 0.9)), int(long_edge.max() * 1.1) + 1
    fig, ax = _log_histogram2d(long_edge, effective_edge, lo, hi)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls=":", label="effective = file (native)")
    ax.plot([lo, hi], [lo / UPSCALED, hi / UPSCALED], color="tab:red", lw=0.8, ls="--", label=f"upscaled {UPSCALED}x")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="file size, longer edge (px, log scale)",
           ylabel="effective size on that edge (px, log scale)",
           title=f"File vs effective size: {100 * float((factors > UPSCALED).mean()):.1f}% of {len(factors):,} "
                 f"upscaled > {UPSCALED}x")
    ax.legend(loc="upper left", fontsize=8)
    _pixel_ticks(ax, lo, hi)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


def _effective_section(index: str | os.PathLike, out: Path) -> list[str]:
    """The report's effective-size part (and ``effective.png``) from the usable rows."""
    import pyarrow.compute as pc

    table = read_index(index, usable=True, columns=["height", "width", "effective_height", "effective_width",
                                                    "effective_confidence", "jpeg_quality", "effective_reason"])
    measured = table.filter(pc.is_valid(table["effective_height"]))
    parts = ["", "## Effective size (before upscaling; `microcond scan --effective`)", ""]
    if not len(measured):
        return parts + [f"None of the {len(table)} usable images could be measured (see the index's effective_reason)."]
    h, w, eh, ew = (measured[c].to_numpy().astype(np.int64) for c in ("height", "width", "effective_height", "effective_width"))
    factors = upscale_factors(h, w, eh, ew)
    wide = w >= h
    _plot_effective(out / "effective.png", np.where(wide, w, h), np.where(wide, ew, eh), factors)
    confidence = measured["effective_confidence"].to_numpy()
    quality = table["jpeg_quality"].drop_null().to_numpy()
    rows = [[f"upscaled > {f}x on an axis", int((factors > f).sum()), _pct((factors > f).sum(), len(factors))]
            for f in (UPSCALED, 2, 4)]
    rows.append([f"upscaled > {UPSCALED}x, confidence >= 0.5", int(((factors > UPSCALED) & (confidence >= 0.5)).sum()),
                 _pct(((factors > UPSCALED) & (confidence >= 0.5)).sum(), len(factors))])
    parts += ["![effective](effective.png)", "",
              f"{len(measured)} of {len(table)} usable images measured ({len(table) - len(measured)} could not be: "
              f"see the index's effective_reason); median confidence {float(np.median(confidence)):.2f}.", "",
              _table(["", "images", "share of measured"], rows)]
    if len(quality):
        q = np.percentile(quality, [5, 25, 50, 75, 95]).round().astype(int)
        parts += ["", f"JPEG quality ({len(quality)} JPEG files) percentiles 5/25/50/75/95: {' / '.join(map(str, q))}; "
                  f"below 75: {_pct((quality < 75).sum(), len(quality))}."]
    return parts


def write_report(index: str | os.PathLike, out_dir: str | os.PathLike, buckets: str = "sdxl", min_edges: Sequence[int] = MIN_EDGES) -> str:
    """Write ``report.md`` and the PNGs into ``out_dir``; return the report as text.

    Args:
        min_edges: thresholds of the minimum-size table (the paper's are the default; add your
            training size, e.g. 32, to see what a filter at it would drop).
    """
    bucket_set = parse_buckets(buckets)
    whole = lambda e: isinstance(e, numbers.Integral) and not isinstance(e, bool)  # noqa: E731
    if not min_edges or not all(whole(e) and 1 <= e <= MAX_MIN_EDGE for e in min_edges):
        raise ValueError(f"--min-edges must be whole pixel sizes from 1 to {MAX_MIN_EDGE}, got {list(min_edges)}")
    min_edges = sorted({int(e) for e in min_edges})
    import pyarrow.compute as pc

    from microcond.data.index import index_settings

    effective = "effective" in index_settings(Path(index)) if Path(index).is_file() else False
    table = read_index(index, columns=["height", "width", "status"])
    status = collections.Counter({v["values"]: v["counts"] for v in pc.value_counts(table["status"]).to_pylist()})
    usable = table.filter(pc.equal(table["status"], "ok"))
    heights = usable["height"].to_numpy().astype(np.int64)  # (N,)
    widths = usable["width"].to_numpy().astype(np.int64)  # (N,)
    ok = range(len(usable))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = sum(status.values())
    problems = ", ".join(f"{n} {s}" for s, n in status.most_common() if s != "ok") or "none"
    parts = [f"# Data report: {index}", "",
             f"{found} files in the index: {len(ok)} usable, {found - len(ok)} unusable ({problems}). "
             "Sizes are (height, width) in pixels after EXIF orientation; shares below are of the usable images."]
    if not ok:
        parts += ["", "No usable images: nothing to plot. Check the scan's problem list (`microcond scan --list-problems`)."]
        text = "\n".join(parts) + "\n"
        atomic_write_text((out / "report.md"), text)
        return text + f"\nwrote {out / 'report.md'}"
    short = np.minimum(heights, widths)
    q = np.percentile(short, [5, 25, 50, 75, 95]).round().astype(int)
    parts += ["", "## Sizes", "", "![sizes](sizes.png)", "",
              _table(["", "height", "width", "shorter edge"],
                     [[name, int(f(heights)), int(f(widths)), int(f(short))] for name, f in
                      (("min", np.min), ("median", np.median), ("max", np.max))]),
              "", f"Shorter edge percentiles 5/25/50/75/95: {' / '.join(map(str, q))} px."]
    table = [[f"< {e} px", n, _pct(img, 1), _pct(pix, 1)] for e, n, img, pix in min_edge_discards(heights, widths, min_edges)]
    parts += ["", "## What a minimum-size filter would discard (paper Fig. 2)", "", "![min edge](min_edge.png)", "",
              _table(["shorter edge", "images discarded", "share of images", "share of pixels"], table), "",
              "Micro-conditioning on the original size keeps all of them (paper section 2.2)."]
    classes = np.searchsorted(np.array(ASPECT_EDGES), widths / heights, side="right")
    counts = np.bincount(classes, minlength=len(ASPECT_NAMES))
    parts += ["", "## Aspect ratios (width : height)", "", "![aspect](aspect.png)", "",
              _table(["aspect", "images", "share"], [[n, int(c), _pct(c, len(ok))] for n, c in zip(ASPECT_NAMES, counts)])]
    fill = bucket_fill(heights, widths, bucket_set)
    used = [(b, n, up) for b, (n, up) in fill.items() if n]
    parts += ["", f"## Bucket fill ({buckets}: {len(bucket_set)} buckets, {len(used)} used)", "", "![buckets](buckets.png)", "",
              "Each image goes to the bucket of nearest aspect ratio; \"upscaled\" images are smaller than their bucket "
              "on a side, the case size conditioning was made for.", "",
              _table(["bucket (h x w)", "aspect w:h", "images", "share", "upscaled"],
                     [[f"{h}x{w}", f"{w / h:.2f}", n, _pct(n, len(ok)), _pct(up, n)] for (h, w), n, up in used])]
    if effective:
        parts += _effective_section(index, out)
    _plot_sizes(out / "sizes.png", heights, widths, PAPER_CUT)
    _plot_min_edge(out / "min_edge.png", heights, widths, min_edges)
    _plot_aspect(out / "aspect.png", heights, widths)
    _plot_buckets(out / "buckets.png", fill, buckets)
    text = "\n".join(parts) + "\n"
    (out / "report.md").write_text(text)
    pictures = "sizes.png, min_edge.png, aspect.png, buckets.png" + (", effective.png" if (out / "effective.png").exists() else "")
    return text + f"\nwrote {out / 'report.md'} and {pictures}"
