"""``--data`` values that name shards to stream, and their expansion into shard URLs.

WebDataset's spellings: a ``pipe:`` command, a URL, a brace pattern (``shard-{000..099}.tar``)
or several of these joined by ``::``. Anything else is a local folder or ``.tar`` file.
"""

from __future__ import annotations

STREAM_PREFIXES = ("pipe:", "http://", "https://", "file:", "gs://", "s3://")


def is_stream(data: str) -> bool:
    """Whether ``--data`` names shards to stream (a pipe, URL, brace pattern or ``::`` list)."""
    return data.startswith(STREAM_PREFIXES) or "{" in data or "::" in data


def expand_urls(spec: str) -> list[str]:
    """The shard URLs of ``spec``: ``::``-separated parts, each brace-expanded (``a-{000..009}.tar``)."""
    from braceexpand import braceexpand

    urls = [url for part in spec.split("::") if part.strip() for url in braceexpand(part.strip())]
    if not urls:
        raise ValueError(f"no shard URLs in --data {spec!r}")
    return urls
