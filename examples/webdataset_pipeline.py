"""A webdataset pipeline that crops with microcond's step: shards in, batches of one bucket each
out, every sample with SDXL's time ids.

    python examples/webdataset_pipeline.py 'shards/shard-{000000..000009}.tar' --buckets sdxl --batch-size 4

Shards written by img2dataset or ``microcond shard`` carry the original size in their JSON
(``original_height``/``original_width``): pixels stored resized are told their true original.
"""

import argparse
import json
from itertools import islice
from typing import Iterator

import torch
import webdataset as wds

from microcond import CropStep


def with_original_size(sample: dict) -> dict:
    """The JSON's original size, when it has one, where CropStep reads it."""
    meta = json.loads(sample.get("json", b"{}"))
    if "original_height" in meta and "original_width" in meta:
        sample["original_size"] = (meta["original_height"], meta["original_width"])
    return sample


def bucketed(samples: Iterator[dict], batch_size: int) -> Iterator[dict]:
    """Batches of one bucket each (SDXL's aspect buckets): a full bucket is a batch."""
    waiting: dict[tuple[int, int], list[dict]] = {}
    for sample in samples:
        group = waiting.setdefault(sample["bucket"], [])
        group.append(sample)
        if len(group) == batch_size:
            yield {"pixels": torch.stack([s["pixels"] for s in group]), "time_ids": torch.stack([s["time_ids"] for s in group]),
                   "keys": [s["__key__"] for s in group]}
            waiting[sample["bucket"]] = []


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("urls", help="shards, as webdataset spells them (brace patterns, pipe:, URLs)")
    parser.add_argument("--buckets", default="sdxl")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args(argv)

    crop = CropStep(buckets=args.buckets, flip_probability=0.5, seed=0, epoch=0)
    dataset = wds.WebDataset(args.urls, shardshuffle=False).map(with_original_size).map(crop)
    batches = list(islice(bucketed(iter(dataset), args.batch_size), args.batches))
    for batch in batches:
        print(f"{tuple(batch['pixels'].shape)}: time ids of the first sample {batch['time_ids'][0].tolist()}")
    return batches


if __name__ == "__main__":
    main()
