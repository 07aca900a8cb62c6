"""Effective-size estimator on upscaled real photographs: accuracy, native/upscaled AUC, cost.

Data: the photographs among Debian's ``plasma-workspace-wallpapers`` (:data:`PHOTOS`; install with
``MICROCOND_BENCH_DATA=1 scripts/setup.sh`` or ``scripts/bench-data.sh``), plus scikit-image's
sample photographs when that package is installed. The wallpapers are soft at 100% (resized and
processed for screens), so each photo is first area-downscaled by :data:`SHARPEN` to be sharp at
the pixel level: that is the native image. Test images, ``--images`` of them, seeded:

* a crop of a native photo, sides log-uniform from 192 px to the whole photo;
* area-downscaled by ``s`` (25% kept at ``s = 1``, the rest log-uniform in [1, 4]) and upscaled back
  to the crop size with nearest, bilinear, bicubic or Lanczos (Pillow), one at random;
* saved as PNG, or (half of them) as JPEG at a quality drawn from 70-95.

One JSON line per result (medians of ``--repeats`` timed passes; the baseline in the same run):

* ``accuracy_lossless`` / ``accuracy_jpeg``: share of images with ``s >= 1.25`` whose estimate is
  within 10%, ``|ln s_hat - ln s| <= 0.095``, with ``s_hat`` the geometric mean of the two axes'
  factors (JPEG: quality >= 75; the 70-74 ones reported apart), per kernel too;
* ``auc``: native (s = 1) against upscaled (s >= 1.25), score ``ln s_hat`` (natives measured at
  1.0 ranked by confidence: ``- 0.01 x confidence``);
* ``false_upscaled``: share of natives with a factor >= 1.25 on either axis; ``false_upscaled_webp``:
  the same natives saved again as lossy WebP (quality 75-95), whose 4x4 transform blocks and
  16x16 macroblocks repeat like an upscale's grid; ``false_upscaled_jpeg_below_75``: saved again
  as JPEG at quality 40-74, whose coarse 8x8 blocks do the same;
* ``cost``: images/s on one core for :func:`microcond.data.effective.estimate` and for a full
  Pillow decode (``Image.open(p).convert("RGB")``) of the same files, and their ratio; the grids
  fitted per image, natives and upscaled (the work, whatever the CPU);
  ``cost_full_size``: the same on the largest file of every wallpaper as installed (3-15 MP),
  where the estimate decodes a band of at most 2 MP;
* ``budget`` (one line per ``--max-grids`` value): the same files measured fitting at most that
  many grids per image: accuracy, natives called upscaled and the cost as above;
* ``memory``: peak RSS of this process;
* ``library`` (one line per resizer library, ``--library-images`` images each, a second set made
  like the first): upscales by Pillow, OpenCV, libvips (pyvips) and ImageMagick (``convert``),
  each with its upscaling kernels drawn at random, factors log-uniform in [1.25, 4], saved as PNG,
  JPEG (q 60-95) or WebP (q 75-95), and a quarter of them cropped after the upscale at a random
  offset (the grid's phase lost): share within 10% per kernel, per format and for the cropped
  ones. A library that is not installed is named and skipped (``scripts/bench-data.sh`` installs
  them all);
* ``library_default`` (one line per library, ``--default-images`` of them): upscales by the
  library's default kernel (Pillow bicubic, OpenCV INTER_LINEAR, libvips' resize, ImageMagick's
  Mitchell), saved as PNG and not cropped: share within 10% (goal 95%).

Usage: python benchmarks/bench_effective.py [--images 400] [--repeats 3] [--seed 0] [--out DIR]
       [--libraries pillow opencv vips magick] [--library-images 120] [--default-images 60] [--only-libraries]
       [--max-grids 300]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core: set before numpy loads
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_mib, timed  # noqa: E402

from microcond.data import gridaxis  # noqa: E402
from microcond.data.effective import estimate  # noqa: E402
from microcond.data.resampling import ProjectionCache  # noqa: E402

WALLPAPERS = Path("/usr/share/wallpapers")
# Photographs in plasma-workspace-wallpapers 5.27 (the others are drawings and renderings).
PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
          "OneStandsOut", "Path", "summer_1am")  # fmt: skip
SHARPEN = 3  # wallpapers are soft at 100%: an area downscale by 3 makes them sharp
KERNELS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
WITHIN = 0.095  # |ln s_hat - ln s|: within 10%
UPSCALED = 1.25


def photographs() -> list[tuple[str, Image.Image]]:
    """(name, native RGB photo): the largest version of each wallpaper photo, sharpened by area
    downscaling, and scikit-image's photos (512 px camera images, downscaled by 2) if installed."""
    found = []
    for name in PHOTOS:
        files = sorted((WALLPAPERS / name / "contents" / "images").glob("*.*"))
        if files:
            with Image.open(max(files, key=lambda p: np.prod(Image.open(p).size))) as im:
                photo = im.convert("RGB")
            found.append((name, photo.reduce(SHARPEN)))  # reduce: box (area) filter
    try:
        from skimage import data
    except ImportError:
        data = None
    for name in ("astronaut", "coffee", "chelsea", "rocket") if data is not None else ():
        found.append((f"skimage-{name}", Image.fromarray(getattr(data, name)()).convert("RGB").reduce(2)))
    if not found:
        raise SystemExit(f"no photographs under {WALLPAPERS}: run `MICROCOND_BENCH_DATA=1 scripts/setup.sh` "
                         "(or scripts/bench-data.sh) to install plasma-workspace-wallpapers")
    return found


def build(folder: Path, count: int, seed: int) -> list[dict]:
    """Write the test images into ``folder``; return one record per image with its truth."""
    rng = np.random.default_rng(seed)
    photos = photographs()
    records = []
    for i in range(count):
        name, photo = photos[i % len(photos)]
        s = 1.0 if rng.random() < 0.25 else float(np.exp(rng.uniform(0, np.log(4))))
        side = np.exp(rng.uniform(np.log(192), np.log(max(photo.size))))
        w, h = min(photo.width, int(side * rng.uniform(0.7, 1.4))), min(photo.height, int(side))
        left, top = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        image = photo.crop((left, top, left + w, top + h))
        kernel = list(KERNELS)[int(rng.integers(len(KERNELS)))]
        small = (max(1, round(w / s)), max(1, round(h / s)))
        if s > 1:
            image = image.resize(small, Image.BOX).resize((w, h), KERNELS[kernel])
        quality = int(rng.integers(70, 96)) if rng.random() < 0.5 else None
        path = folder / f"{i:04d}.{'jpg' if quality else 'png'}"
        if quality:
            image.save(path, quality=quality)
        else:
            image.save(path, compress_level=1)
        truth = (h / small[1], w / small[0]) if s > 1 else (1.0, 1.0)
        records.append({"path": path, "photo": name, "s": s, "truth": truth, "kernel": kernel, "quality": quality})
    return records


def _opencv(kernel: str):
    import cv2

    flag = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "lanczos4": cv2.INTER_LANCZOS4, "area": cv2.INTER_AREA}[kernel]
    return lambda image, size: Image.fromarray(cv2.resize(np.asarray(image), size, interpolation=flag))


def _vips(kernel: str):
    import pyvips

    def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
        source = pyvips.Image.new_from_memory(image.tobytes(), image.width, image.height, 3, "uchar")
        out = source.resize(size[0] / image.width, vscale=size[1] / image.height, **({} if kernel == "default" else {"kernel": kernel}))
        return Image.frombytes("RGB", (out.width, out.height), out.write_to_memory())

    return resize


def _magick(kernel: str):
    import subprocess

    def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
        with tempfile.TemporaryDirectory() as tmp:
            image.save(f"{tmp}/in.png")
            flags = [] if kernel == "default" else ["-filter", kernel]
            subprocess.run(["convert", f"{tmp}/in.png", *flags, "-resize", f"{size[0]}x{size[1]}!", f"{tmp}/out.png"], check=True, capture_output=True)
            with Image.open(f"{tmp}/out.png") as out:
                return out.convert("RGB")

    return resize


# library -> (import check, kernel -> resize(image, (w, h)) maker); "default" is what the library does unasked.
DEFAULTS = {"pillow": "bicubic", "opencv": "linear", "vips": "default", "magick": "default"}  # each library's upscale when none is named
LIBRARIES = {
    "pillow": (lambda: None, {k: (lambda f: lambda image, size: image.resize(size, f))(f) for k, f in KERNELS.items()}),
    "opencv": (lambda: __import__("cv2"), {k: _opencv(k) for k in ("nearest", "linear", "cubic", "lanczos4", "area")}),
    "vips": (lambda: __import__("pyvips"), {k: _vips(k) for k in ("default", "linear", "cubic", "mitchell", "lanczos3")}),
    "magick": (lambda: _magick_version(), {k: _magick(k) for k in ("default", "Triangle", "Catrom", "Mitchell", "Lanczos")}),
}


def _magick_version() -> None:
    import subprocess

    out = subprocess.run(["convert", "-version"], capture_output=True, text=True)
    if "ImageMagick" not in out.stdout:
        raise ImportError("ImageMagick's convert is not installed (apt-get install imagemagick)")


def build_library(folder: Path, library: str, count: int, seed: int, default_only: bool = False) -> list[dict]:
    """``count`` images upscaled by ``library`` (kernels, formats and crops drawn at random), or with
    ``default_only`` by its default kernel, aligned and lossless."""
    rng = np.random.default_rng([seed, sorted(LIBRARIES).index(library), default_only])
    photos, kernels = photographs(), LIBRARIES[library][1]
    if default_only:
        kernels = {DEFAULTS[library]: kernels[DEFAULTS[library]]}
    records = []
    for i in range(count):
        name, photo = photos[i % len(photos)]
        s = float(np.exp(rng.uniform(np.log(UPSCALED), np.log(4))))
        cropped = rng.random() < 0.25 and not default_only
        w = int(np.exp(rng.uniform(np.log(192), np.log(max(193, min(photo.size) / 2)))))
        h = min(photo.height, int(w * rng.uniform(0.7, 1.2)))
        small = (max(8, round(w / s)) + 2 * cropped, max(8, round(h / s)) + 2 * cropped)  # two more originals to crop into
        left, top = int(rng.integers(0, photo.width - small[0] * 2 + 1)), int(rng.integers(0, photo.height - small[1] * 2 + 1))
        native = photo.crop((left, top, left + small[0] * 2, top + small[1] * 2)).reduce(2)  # box filter: sharp
        kernel = list(kernels)[int(rng.integers(len(kernels)))]
        big = (round(small[0] * s), round(small[1] * s))
        image = kernels[kernel](native, big)
        truth = (big[1] / small[1], big[0] / small[0])
        if cropped:  # a window starting anywhere within the first two originals
            dx, dy = int(rng.integers(0, int(2 * s) + 1)), int(rng.integers(0, int(2 * s) + 1))
            image = image.crop((dx, dy, dx + big[0] - int(2 * s) - 1, dy + big[1] - int(2 * s) - 1))
        fmt = "png" if default_only else ["png", "jpeg", "jpeg", "webp"][int(rng.integers(4))]
        quality = int(rng.integers(60, 96)) if fmt == "jpeg" else int(rng.integers(75, 96)) if fmt == "webp" else None
        path = folder / f"{library}{'-default' if default_only else ''}-{i:04d}.{fmt.replace('jpeg', 'jpg')}"
        image.save(path, **({"quality": quality} if quality else {"compress_level": 1}))
        records.append({"path": path, "kernel": kernel, "format": fmt, "quality": quality, "cropped": cropped, "truth": truth})
    return records


def _measured(records: list[dict]) -> list[dict]:
    for r in records:
        e = estimate(r["path"])
        r["ok"] = abs(np.log(np.sqrt(e.scale[0] * e.scale[1]) / np.sqrt(r["truth"][0] * r["truth"][1]))) <= WITHIN
    return records


def share(rows: list[dict]) -> dict:
    return {"n": len(rows), "within_10pct": round(float(np.mean([r["ok"] for r in rows])), 3) if rows else None}


def library_lines(folder: Path, libraries: list[str], count: int, defaults: int, seed: int, env: dict) -> None:
    """Two JSON lines per library: its default upscale, lossless and aligned (``defaults`` images);
    and ``count`` images by its kernels at random: share within 10% by kernel, format and phase."""
    for library in libraries:
        try:
            LIBRARIES[library][0]()
        except (ImportError, OSError) as err:
            print(json.dumps({"bench": "effective", "case": "library", "library": library, "skipped": str(err), **env}), flush=True)
            continue
        if defaults:
            found = share(_measured(build_library(folder, library, defaults, seed, default_only=True)))
            print(json.dumps({"bench": "effective", "case": "library_default", "library": library, "kernel": DEFAULTS[library], **found,
                              "goal": 0.95, "met": found["within_10pct"] >= 0.95, **env}), flush=True)
        records = _measured(build_library(folder, library, count, seed))

        aligned = [r for r in records if not r["cropped"]]
        lossless = [r for r in aligned if r["format"] == "png"]
        print(json.dumps({"bench": "effective", "case": "library", "library": library, "images": len(records),
                          "lossless_per_kernel": {k: share([r for r in lossless if r["kernel"] == k]) for k in LIBRARIES[library][1]},
                          "lossless": share(lossless), "jpeg_q75_up": share([r for r in aligned if r["format"] == "jpeg" and r["quality"] >= 75]),
                          "jpeg_below_75": share([r for r in aligned if r["format"] == "jpeg" and r["quality"] < 75]),
                          "webp": share([r for r in aligned if r["format"] == "webp"]),
                          "cropped_lossless": share([r for r in records if r["cropped"] and r["format"] == "png"]),
                          "cropped_all": share([r for r in records if r["cropped"]]), **env}), flush=True)


def natives_saved_again(folder: Path, natives: list[dict], seed: int, fmt: str, qualities: tuple[int, int]) -> list[bool]:
    """Whether each native, saved again as ``fmt`` ("webp" or "jpg") at a quality drawn from
    ``qualities`` (both ends included), is called upscaled."""
    rng, flagged = np.random.default_rng([seed, 3] + ([1] if fmt == "jpg" else [])), []  # WebP: the draws of earlier runs
    for r in natives:
        path = folder / f"native-{Path(r['path']).stem}-again.{fmt}"
        with Image.open(r["path"]) as im:
            im.convert("RGB").save(path, quality=int(rng.integers(qualities[0], qualities[1] + 1)))
        flagged.append(max(estimate(path).scale) >= UPSCALED)
    return flagged


def fresh_cache() -> ProjectionCache:
    """An empty cache of grid projections for this process, as a new scan starts with."""
    gridaxis.PROJECTIONS = ProjectionCache()
    return gridaxis.PROJECTIONS


def same_size_line(folder: Path, repeats: int, seed: int, env: dict, count: int = 100, size: tuple[int, int] = (512, 384)) -> None:
    """Cost where sizes repeat, as in a web crawl or a camera's folder: ``count`` crops of one size
    (a quarter native, the rest upscaled by 1.25-4 with Pillow's bicubic), JPEG q85. The grids an
    image's own periodicity does not choose are fitted once for all of them (the kept projections)."""
    rng = np.random.default_rng([seed, 7])
    photos, paths = photographs(), []
    for i in range(count):
        _, photo = photos[i % len(photos)]
        left, top = int(rng.integers(0, photo.width - size[0] + 1)), int(rng.integers(0, photo.height - size[1] + 1))
        image = photo.crop((left, top, left + size[0], top + size[1]))
        if i % 4:
            s = float(np.exp(rng.uniform(np.log(UPSCALED), np.log(4))))
            image = image.resize((round(size[0] / s), round(size[1] / s)), Image.BOX).resize(size, Image.BICUBIC)
        paths.append(folder / f"same-{i:04d}.jpg")
        image.save(paths[-1], quality=85)
    caches = []

    def run_estimates() -> None:
        caches[:] = [fresh_cache()]  # the last pass's cache only: its size is reported
        for path in paths:
            estimate(path)

    def run_decodes() -> None:
        for path in paths:
            with Image.open(path) as im:
                im.convert("RGB")

    seconds = {"decode": timed(run_decodes, repeats, clock=time.process_time), "estimate": timed(run_estimates, repeats, clock=time.process_time)}
    cache = caches[-1]
    print(json.dumps({"bench": "effective", "case": "cost_same_size", "images": count, "size": list(size),
                      "estimate_images_per_s": round(count / seconds["estimate"], 1), "decode_images_per_s": round(count / seconds["decode"], 1),
                      "estimate_vs_decode_time": round(seconds["estimate"] / seconds["decode"], 2),
                      "kept_grids_reused": round(cache.hits / max(1, cache.hits + cache.misses), 3),
                      "kept_mib": round(cache.nbytes / 2**20, 1), **env}), flush=True)


def _grids(natives: list, upscaled: list) -> dict:
    """Mean grids fitted per image (:class:`microcond.data.effective.Effective`'s ``grids``)."""
    return {"natives": round(float(np.mean([e.grids for e in natives])), 1), "upscaled": round(float(np.mean([e.grids for e in upscaled])), 1)}


def budget_line(records: list[dict], budget: int, decode_s: float, repeats: int, env: dict) -> None:
    """The main set measured again fitting at most ``budget`` grids per image."""
    found = {}

    def run_estimates() -> None:
        fresh_cache()
        for r in records:
            found[r["path"]] = estimate(r["path"], max_grids=budget)

    seconds = timed(run_estimates, repeats, clock=time.process_time)
    ok = {r["path"]: abs(np.log(np.sqrt(np.prod(found[r["path"]].scale)) / np.sqrt(np.prod(r["truth"])))) <= WITHIN for r in records}
    upscaled = [r for r in records if r["s"] >= UPSCALED]
    natives = [r for r in records if r["s"] == 1.0]
    lossless = [ok[r["path"]] for r in upscaled if r["quality"] is None]
    jpeg = [ok[r["path"]] for r in upscaled if r["quality"] is not None and r["quality"] >= 75]
    print(json.dumps({"bench": "effective", "case": "budget", "max_grids": budget,
                      "accuracy_lossless": round(float(np.mean(lossless)), 3), "accuracy_jpeg": round(float(np.mean(jpeg)), 3),
                      "false_upscaled": round(float(np.mean([max(found[r["path"]].scale) >= UPSCALED for r in natives])), 3),
                      "estimate_vs_decode_time": round(seconds / decode_s, 2),
                      "grids_per_image": _grids([found[r["path"]] for r in natives], [found[r["path"]] for r in upscaled]),
                      **env}), flush=True)


def full_size_files() -> list[Path]:
    """The largest file of every wallpaper, drawings included: the cost on camera-size files."""
    files = []
    for folder in sorted(p for p in WALLPAPERS.glob("*/contents") if p.is_dir()):
        candidates = sorted(folder.glob("images*/*.*"))
        if candidates:
            files.append(max(candidates, key=lambda p: np.prod(Image.open(p).size)))
    return files


def auc(negatives: list[float], positives: list[float]) -> float:
    """Probability that a positive scores above a negative (ties count half): Mann-Whitney U."""
    neg, pos = np.asarray(negatives), np.asarray(positives)
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (len(neg) * len(pos)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for the test images (default: a temp folder)")
    parser.add_argument("--libraries", nargs="*", choices=sorted(LIBRARIES), default=sorted(LIBRARIES), help="resizer libraries of the library lines")
    parser.add_argument("--library-images", type=int, default=120, help="images per library, kernels at random")
    parser.add_argument("--default-images", type=int, default=60, help="images per library by its default kernel, lossless and aligned")
    parser.add_argument("--only-libraries", action="store_true", help="only the library lines (no main set, no cost)")
    parser.add_argument("--max-grids", type=int, nargs="*", default=[300], help="work budgets of the budget lines")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="bench-effective-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {"cpus": len(os.sched_getaffinity(0)), "threads": 1, "device": "cpu", "python": sys.version.split()[0]}
    if args.only_libraries:
        library_lines(folder, args.libraries, args.library_images, args.default_images, args.seed, env)
        return
    start = time.perf_counter()
    records = build(folder, args.images, args.seed)
    pixels = sum(int(np.prod(Image.open(r["path"]).size)) for r in records)
    print(json.dumps({"bench": "effective", "case": "data", "images": len(records), "photos": len({r["photo"] for r in records}),
                      "megapixels": round(pixels / 1e6, 1), "folder": str(folder),
                      "build_s": round(time.perf_counter() - start, 1), **env}), flush=True)  # fmt: skip

    def run_estimates() -> None:
        fresh_cache()  # every pass sees the files for the first time: no grid kept from the last one
        for r in records:
            r["estimate"] = estimate(r["path"])

    def run_decodes() -> None:
        for r in records:
            with Image.open(r["path"]) as im:
                im.convert("RGB")

    seconds = {name: timed(fn, args.repeats, clock=time.process_time) for name, fn in (("decode", run_decodes), ("estimate", run_estimates))}

    for r in records:
        e = r["estimate"]
        r["s_hat"] = float(np.sqrt(e.scale[0] * e.scale[1]))
        r["true"] = float(np.sqrt(r["truth"][0] * r["truth"][1]))
        r["ok"] = abs(np.log(r["s_hat"] / r["true"])) <= WITHIN
        r["score"] = np.log(r["s_hat"]) if r["s_hat"] > 1 else -0.01 * e.confidence
    upscaled = [r for r in records if r["s"] >= UPSCALED]
    natives = [r for r in records if r["s"] == 1.0]
    groups = {"accuracy_lossless": [r for r in upscaled if r["quality"] is None],
              "accuracy_jpeg": [r for r in upscaled if r["quality"] is not None and r["quality"] >= 75],
              "accuracy_jpeg_below_75": [r for r in upscaled if r["quality"] is not None and r["quality"] < 75]}
    goals = {"accuracy_lossless": 0.95, "accuracy_jpeg": 0.85}
    for case, group in groups.items():
        kernels, photos = collections.defaultdict(list), collections.defaultdict(list)
        for r in group:
            kernels[r["kernel"]].append(r["ok"])
            photos[r["photo"]].append(r["ok"])
        share = float(np.mean([r["ok"] for r in group])) if group else float("nan")
        line = {"bench": "effective", "case": case, "images": len(group), "within_10pct": round(share, 3),
                "per_kernel": {k: round(float(np.mean(v)), 3) for k, v in sorted(kernels.items())},
                "per_photo": {k: round(float(np.mean(v)), 2) for k, v in sorted(photos.items())}, **env}
        if case in goals:
            line.update(goal=goals[case], met=bool(share >= goals[case]))
        print(json.dumps(line), flush=True)
    area = auc([r["score"] for r in natives], [r["score"] for r in upscaled])
    print(json.dumps({"bench": "effective", "case": "auc", "natives": len(natives), "upscaled": len(upscaled),
                      "auc": round(area, 3), "goal": 0.98, "met": area >= 0.98, **env}), flush=True)
    false = float(np.mean([max(r["estimate"].scale) >= UPSCALED for r in natives]))
    print(json.dumps({"bench": "effective", "case": "false_upscaled", "natives": len(natives), "rate": round(false, 3),
                      "goal": 0.02, "met": false <= 0.02, **env}), flush=True)
    for case, fmt, qualities in (("false_upscaled_webp", "webp", (75, 95)), ("false_upscaled_jpeg_below_75", "jpg", (40, 74))):
        again = natives_saved_again(folder, natives, args.seed, fmt, qualities)
        print(json.dumps({"bench": "effective", "case": case, "natives": len(again), "rate": round(float(np.mean(again)), 3),
                          "goal": 0.02, "met": float(np.mean(again)) <= 0.02, **env}), flush=True)
    ratio = seconds["estimate"] / seconds["decode"]
    print(json.dumps({"bench": "effective", "case": "cost", "images": len(records),
                      "estimate_images_per_s": round(len(records) / seconds["estimate"], 1),
                      "decode_images_per_s": round(len(records) / seconds["decode"], 1),
                      "estimate_vs_decode_time": round(ratio, 2), "goal": 2.0, "met": ratio <= 2.0,
                      "grids_per_image": _grids([r["estimate"] for r in natives], [r["estimate"] for r in upscaled]),
                      "median_s": {k: round(v, 3) for k, v in seconds.items()}, **env}), flush=True)
    for budget in args.max_grids:
        budget_line(records, budget, seconds["decode"], args.repeats, env)
    large = full_size_files()

    def decode_large() -> None:
        for path in large:
            with Image.open(path) as im:
                im.convert("RGB")

    def estimate_large() -> None:
        fresh_cache()
        for path in large:
            estimate(path)

    big = {"decode": timed(decode_large, args.repeats, clock=time.process_time), "estimate": timed(estimate_large, args.repeats, clock=time.process_time)}
    print(json.dumps({"bench": "effective", "case": "cost_full_size", "images": len(large),
                      "megapixels": round(sum(float(np.prod(Image.open(p).size)) for p in large) / 1e6, 1),
                      "estimate_images_per_s": round(len(large) / big["estimate"], 1),
                      "decode_images_per_s": round(len(large) / big["decode"], 1),
                      "estimate_vs_decode_time": round(big["estimate"] / big["decode"], 2), "goal": 1.0,
                      "met": big["estimate"] / big["decode"] <= 1.0, **env}), flush=True)
    same_size_line(folder, args.repeats, args.seed, env)
    library_lines(folder, args.libraries, args.library_images, args.default_images, args.seed, env)
    print(json.dumps({"bench": "effective", "case": "memory", "peak_rss_mib": round(peak_rss_mib(), 1), **env}))


if __name__ == "__main__":
    main()
