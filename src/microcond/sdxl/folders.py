"""Local model folders: checked before use, and identified by their bytes (cache keys)."""

from __future__ import annotations

import hashlib
from pathlib import Path

TEXT_PARTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def require_folder(path: str | Path, flag: str, holds: str) -> Path:
    """``path`` as a Path if it is a folder with ``config.json`` (or the named parts), else one clear error."""
    folder = Path(path)
    parts = TEXT_PARTS if flag == "--text-encoders" else ("config.json",)
    missing = [p for p in parts if not (folder / p).exists()]
    if not folder.is_dir() or missing:
        raise ValueError(f"{flag} {str(path)!r} must be a local folder holding {holds}; "
                         f"{'it does not exist' if not folder.is_dir() else 'missing ' + ', '.join(missing)} "
                         f"(nothing is downloaded: point {flag} at a copy on disk)")
    return folder


def folder_identity(folder: Path) -> str:
    """Hash of every file's name and bytes under ``folder``: the same weights, the same identity."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\n".encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:24]
