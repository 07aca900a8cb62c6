"""WebDataset tar shards: write them from a folder, index them for the loader, or stream them.

A sample is ``KEY.EXT`` (the image file's bytes, unchanged) plus ``KEY.json`` with
``original_height`` and ``original_width`` (after EXIF orientation) and ``label``, the fields
img2dataset writes, so shards made elsewhere with pre-resized pixels keep their true original
size (paper section 2.2; diffusers #6203 recorded the resized size instead). ``source`` is the
image's path relative to the scanned folder (never an absolute local path).

Members are grouped into samples as webdataset does (consecutive files sharing the key of
``base_plus_ext``). A bad sample never stops the reading: a JSON that is not an object, an
original size that is not an integer from 1 to ``headers.MAX_SIDE``, no image, an unreadable
header: the sample is skipped and listed as ``shard:key`` with its reason. A damaged tar (cut
short) keeps the samples before the damage; the sample it cuts is left out and listed.

Two ways to read shards:

- :func:`index_shards` reads local shards by member offset into an
  :class:`~microcond.data.source.ImageSource`: every guarantee of
  :class:`~microcond.data.loader.BucketBatches` holds (global batches, exact split across ranks
  and workers, exact resume, the pixel cache).
- :class:`microcond.data.stream.ShardStream` streams shards (files, URLs, pipes) without
  indexing them, for data too large to index or not on local disk.

Both crop a sample with the generator keyed by :func:`sample_key` of its tar key, so the two
paths crop a sample alike; shards written by :func:`write_shards` are keyed by the folder's row,
so training from them crops like training from the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from webdataset.tariterators import base_plus_ext

from microcond.data.crop import oriented_size
from microcond.data.headers import MAX_SIDE, size_problem
from microcond.data.source import ImageSource

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
SHARD_STRIDE = 1 << 32  # a streamed sample's index is shard * SHARD_STRIDE + position in the shard


def sample_key(key: str) -> int:
    """The crop generator's key of a tar sample: its key as a number when it is one (``000123`` ->
    123, as :func:`write_shards` and img2dataset write them), else a stable 63-bit hash of it."""
    if key.isdigit() and int(key) < 2**63:
        return int(key)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


def write_shards(source: ImageSource, out_dir: str | Path, max_count: int = 1000, progress: bool = True) -> list[Path]:
    """Write every row of ``source`` into ``out_dir/shard-NNNNNN.tar``, ``max_count`` samples each."""
    import webdataset

    if not (isinstance(max_count, int) and max_count >= 1):
        raise ValueError(f"max_count must be a positive integer of samples per shard, got {max_count!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; choose a new or empty folder for the shards")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("shard-*.tar")):
        raise ValueError(f"{out} already holds shard-*.tar files; choose an empty --out folder")
    for stale in out.glob(".shard-*.tar.partial"):  # left by a writer killed outright
        stale.unlink()
    written: list[Path] = []

    def finished(partial: str) -> None:  # a shard gets its name only when it is whole
        whole = out / Path(partial).name.removeprefix(".").removesuffix(".partial")
        os.replace(partial, whole)
        written.append(whole)

    try:
        _write_samples(webdataset.ShardWriter(str(out / ".shard-%06d.tar.partial"), maxcount=max_count, verbose=0, post=finished),
                       source, progress)
    except OSError as err:
        partial = sorted(out.glob(".shard-*.tar.partial"))
        for path in [*written, *partial]:
            path.unlink(missing_ok=True)
        where = partial[-1].name.removeprefix(".").removesuffix(".partial") if partial else "a shard"
        raise OSError(f"writing {out / where} failed ({err.strerror or err}); the {len(written)} complete shard(s) and the "
                      f"partial one were removed from {out}, so the same command can run again") from None
    return written


def _write_samples(writer: Any, source: ImageSource, progress: bool) -> None:
    """Every row of ``source`` as a sample: the image's bytes and its JSON (original size, label,
    effective size when measured, the file's path relative to the folder)."""
    from tqdm import tqdm

    try:
        for i in tqdm(range(len(source)), desc="shards", unit="img", disable=not progress, file=sys.stderr):
            file = source.locations[i][0]
            ext = Path(file).suffix.lower().lstrip(".") or "img"
            ext = "jpg" if ext == "jpeg" else ext
            data = source.open(i)
            data = data if isinstance(data, bytes) else Path(data).read_bytes()
            h, w = (int(v) for v in source.original_sizes[i])
            meta = {"original_height": h, "original_width": w, "label": int(source.labels[i])}
            if source.effective_sizes is not None and source.effective_sizes[i, 0] > 0:  # from `scan --effective`
                meta["effective_height"], meta["effective_width"] = (int(v) for v in source.effective_sizes[i])
            if source.root is not None:  # provenance without the local folder's absolute path
                meta["source"] = Path(os.path.relpath(source.names[i], source.root)).as_posix()
            writer.write({"__key__": f"{i:09d}", ext: data, "json": json.dumps(meta).encode()})
    except BaseException:
        writer.post = None  # a shard cut short by the error must not get its final name
        with contextlib.suppress(Exception):
            writer.close()
        raise
    writer.close()


def tar_samples(tar: tarfile.TarFile, read: Callable[[tarfile.TarInfo], Any],
                 damage: list[tuple[str | None, str]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(key, {ext: read(member)})`` per sample, in tar order (webdataset's grouping).

    A damaged tar ends the samples: those before the damage are kept; the one it cuts may lack
    members, so it is left out, and ``(its key, reason)`` goes to ``damage``.
    """
    key, files, kept = None, {}, 0
    try:
        for member in tar:
            member_key, ext = base_plus_ext(member.name)  # webdataset's own KEY.EXT rule
            if not member.isfile() or member_key is None:
                continue
            if member_key != key:
                if key is not None:
                    yield key, files
                    kept += 1
                key, files = member_key, {}
            files[ext.lower()] = read(member)
        # tarfile ends silently at a missing or partial header: only the end-of-archive block says it is whole
        if tar.fileobj.tell() < tar.offset + tarfile.BLOCKSIZE:
            raise tarfile.ReadError("the tar ends without its end-of-archive block (truncated)")
    except (tarfile.TarError, OSError) as err:
        damage.append((key, f"damaged tar ({err}): this sample and any after it are left out, "
                            f"the {kept} samples before it are kept"))
        return
    if key is not None:
        yield key, files


def _metadata(raw: bytes | None) -> dict[str, Any]:
    """The sample's JSON object, ``{}`` without one; ValueError when it is not an object."""
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"the sample's JSON is unreadable ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"expected a JSON object in the sample's .json, got {type(meta).__name__} {raw[:40]!r}")
    return meta


def _original_size(meta: dict[str, Any], kind: str = "original") -> tuple[int, int] | None:
    """(h, w) from img2dataset-style JSON (``original_height``, ``original_width``; or the
    ``effective_`` pair), None when absent; ValueError when not a plausible size."""
    present = {k: meta[k] for k in (f"{kind}_height", f"{kind}_width") if meta.get(k) is not None}
    for name, value in present.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
            raise ValueError(f"expected {name} in the sample's JSON to be an integer from 1 to {MAX_SIDE}, got {value!r}")
    if len(present) < 2:
        return None
    return present[f"{kind}_height"], present[f"{kind}_width"]


def _label(meta: dict[str, Any], cls: bytes | None) -> int:
    label = meta["label"] if isinstance(meta.get("label"), int) else int(cls.decode().strip()) if cls else -1
    if not -1 <= label < 2**31:
        raise ValueError(f"expected a class label from -1 to 2**31 - 1 (JSON label or .cls), got {label}")
    return label


def sample_info(files: dict[str, Any], read: Callable[[Any], bytes]) -> tuple[Any, tuple[int, int], bool, int, tuple[int, int] | None]:
    """(image member, original (h, w), whether that size is the JSON's, label, effective (h, w)
    or None) of one sample.

    ``files`` maps extensions to members, ``read`` gives a member's bytes. ValueError says what is wrong.
    """
    image = next((files[e] for e in IMAGE_EXTS if e in files), None)
    if image is None:
        raise ValueError(f"no image member (found {sorted(files)})")
    meta = _metadata(read(files["json"]) if "json" in files else None)
    size = _original_size(meta)
    from_meta = size is not None
    if size is None:
        with open_header(read(image)) as header:
            size = oriented_size(header)
        if (problem := size_problem(*size)) is not None:
            raise ValueError(f"the image header gives {problem}")
    effective = _original_size(meta, "effective")
    if effective is not None and (effective[0] > size[0] or effective[1] > size[1]):  # undoing an upscale never grows
        raise ValueError(f"effective size {effective} (h, w) in the sample's JSON exceeds the original size {size}; "
                         "an effective size is at most the file's (rescan with `microcond scan --effective`)")
    return image, size, from_meta, _label(meta, read(files["cls"]) if "cls" in files else None), effective


def index_shards(shards: Sequence[str | Path], min_original_edge: int = 0, size_source: str = "file") -> ImageSource:
    """Every image of local tar shards as an ImageSource, read later by member offset.

    The original size comes from the sample's JSON (``original_height`` / ``original_width``)
    when present, else from the image header; the effective size from ``effective_height`` /
    ``effective_width`` (written from a ``scan --effective`` index). Bad samples, unreadable
    tars and the damage of a cut tar are listed in ``skipped`` (see the module doc); the intact
    samples are kept.
    """
    rows: dict[str, list[Any]] = {"names": [], "sizes": [], "labels": [], "stamps": [], "locations": [], "meta": [], "keys": [],
                                  "effective": []}
    skipped: list[tuple[str, str]] = []
    dropped = 0
    for shard in sorted(str(s) for s in shards):
        try:
            mtime = Path(shard).stat().st_mtime_ns
            with tarfile.open(shard, "r:") as tar:
                damage: list[tuple[str | None, str]] = []
                for key, files in tar_samples(tar, lambda member: member, damage):
                    name = f"{shard}:{key}"
                    try:
                        image, size, from_meta, label, effective = sample_info(files, lambda member: tar.extractfile(member).read())
                    except (ValueError, OSError, tarfile.TarError) as err:
                        skipped.append((name, str(err)))
                        continue
                    if min(size) < min_original_edge:
                        dropped += 1
                        continue
                    rows["names"].append(name)
                    rows["sizes"].append(size)
                    rows["labels"].append(label)
                    rows["stamps"].append((image.size, mtime))
                    rows["locations"].append((shard, image.offset_data, image.size))
                    rows["meta"].append(from_meta)
                    rows["keys"].append(sample_key(key))
                    rows["effective"].append(effective or (-1, -1))
                skipped += [(shard if key is None else f"{shard}:{key}", reason) for key, reason in damage]
        except (OSError, tarfile.TarError) as err:
            skipped.append((shard, f"unreadable tar ({err})"))
    n = len(rows["names"])
    effective = np.asarray(rows["effective"], dtype=np.int64).reshape(n, 2)  # -1: not in the sample's JSON
    return ImageSource(
        names=rows["names"],
        original_sizes=np.asarray(rows["sizes"], dtype=np.int64).reshape(n, 2),
        labels=np.asarray(rows["labels"], dtype=np.int64).reshape(n),
        stamps=np.asarray(rows["stamps"], dtype=np.int64).reshape(n, 2),
        locations=rows["locations"],
        size_from_metadata=np.asarray(rows["meta"], dtype=bool).reshape(n),
        keys=np.asarray(rows["keys"], dtype=np.int64).reshape(n),
        effective_sizes=effective if (effective[:, 0] > 0).any() else None,  # none at all: refused unless size_source is file
        size_source=size_source,
        skipped=skipped,
        dropped_small=dropped,
    )


def open_header(data: bytes) -> Any:
    """A lazily opened image (header only) of some bytes; ValueError when unreadable."""
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data))
    except Exception as err:  # Pillow raises many types for a bad header
        raise ValueError(f"not a readable image ({type(err).__name__}: {err})") from None
