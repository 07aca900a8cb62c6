"""``--data`` values that name shards to stream, and their expansion into shard URLs.

WebDataset's spellings: a ``pipe:`` command, a URL, a brace pattern (``shard-{000..099}.tar``)
or several of these joined by ``::``. Anything else is a local folder or ``.tar`` file.
"""

from __future__ import annotations

from typing import BinaryIO

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


# The commands webdataset's gopen runs for these schemes, started here as ChildPipes so that they
# die with their reader (microcond.base.children); other schemes go through webdataset's gopen.
CURL = ("curl", "--connect-timeout", "30", "--retry", "30", "--retry-delay", "2", "-f", "-s", "-L")
URL_COMMANDS = {"http": CURL, "https": CURL, "sftp": CURL, "ftps": CURL, "scp": CURL, "gs": ("gsutil", "cat")}


def open_url(url: str) -> BinaryIO:
    """A shard's bytes, read as a stream: a local path, ``file:``, ``pipe:CMD`` or a URL."""
    from urllib.parse import urlparse

    from microcond.base.children import ChildPipe

    if url.startswith("pipe:"):
        return ChildPipe(url[len("pipe:"):])  # type: ignore[return-value]
    scheme = urlparse(url).scheme
    if scheme in URL_COMMANDS:
        return ChildPipe([*URL_COMMANDS[scheme], url])  # type: ignore[return-value]
    if scheme == "file":
        return open(url[len("file:"):].removeprefix("//"), "rb")
    if scheme == "" or len(scheme) == 1:  # a path (or a Windows drive letter)
        return open(url, "rb")
    from webdataset.gopen import gopen

    return gopen(url)
