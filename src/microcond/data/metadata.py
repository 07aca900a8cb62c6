"""The one reader of ``metadata.jsonl``, the Hugging Face image-folder layout the demo data uses:
one JSON object per line, ``"file"`` relative to the folder, then any of ``"label"``,
``"caption"``/``"text"`` and ``"original_size"``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

NAME = "metadata.jsonl"


def read_metadata(folder: str | Path) -> Iterator[tuple[str, dict]]:
    """``(file, record)`` per line of ``folder/metadata.jsonl`` in file order, ``file`` as a POSIX
    path relative to the folder; nothing when there is no such file. A line that is not a JSON
    object with a string ``"file"`` raises ValueError naming ``path:line``."""
    path = Path(folder) / NAME
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err})") from None
            if not isinstance(record, dict) or not isinstance(record.get("file"), str):
                raise ValueError(f"{path}:{number}: expected a JSON object with a string 'file', got {line.strip()[:80]!r}")
            yield Path(record["file"]).as_posix(), record


def labels_of(folder: str | Path) -> dict[str, int]:
    """``{file: label}`` of the records with an integer ``"label"``; a record with neither a label
    nor a caption is an error (a labelled data set with one label missing)."""
    labels = {}
    for file, record in read_metadata(folder):
        label = record.get("label")
        if label is None and ("caption" in record or "text" in record):
            continue  # a captioned data set: no class labels
        if isinstance(label, bool) or not isinstance(label, int):
            raise ValueError(f"{Path(folder) / NAME}: expected an integer 'label' for {file!r}, got {label!r}")
        labels[file] = label
    return labels


def captions_of(folder: str | Path) -> dict[str, str]:
    """``{file: caption}`` from ``"caption"`` (else ``"text"``) where it is a string."""
    found = {}
    for file, record in read_metadata(folder):
        text = record.get("caption", record.get("text"))
        if isinstance(text, str):
            found[file] = text
    return found
