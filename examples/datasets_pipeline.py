"""A Hugging Face ``datasets`` pipeline that crops with microcond's step: rows with an image
column become cropped pixels with SDXL's time ids, on access (``set_transform``).

    python examples/datasets_pipeline.py IMAGE_FOLDER --resolution 64

Any dataset with an ``image`` column works the same way (``load_dataset(...)``); a key column
makes each row's random crop independent of the order rows are read in.
"""

import argparse
from pathlib import Path

from datasets import Dataset, Image

from microcond import CropStep

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def main(argv: list[str] | None = None) -> Dataset:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args(argv)

    files = sorted(str(f) for f in args.folder.iterdir() if f.suffix.lower() in SUFFIXES)
    dataset = Dataset.from_dict({"image": files, "key": [Path(f).name for f in files]}).cast_column("image", Image())
    crop = CropStep(buckets=f"square:{args.resolution}", flip_probability=0.5, seed=0, key_field="key")
    dataset.set_transform(crop.batch)  # rows are cropped when read, in any order, by any worker
    for row in dataset.select(range(min(3, len(dataset)))):
        print(f"{row['key']}: pixels {tuple(row['pixels'].shape)}, time ids {row['time_ids'].tolist()}")
    return dataset


if __name__ == "__main__":
    main()
