"""Ordering of data-parallel processes around shared work (scan indexes, caches)."""

from __future__ import annotations

from typing import Iterator

import torch


def rank_zero_first(rank: int) -> Iterator[None]:
    """Yield once on every rank: rank 0 first, the others after it (a barrier between), so they
    find what rank 0 wrote (scan indexes, caches) instead of racing to write it too::

        for _ in rank_zero_first(rank):
            cache = PixelCache.build(...)
    """
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            yield
        if dist:
            torch.distributed.barrier()
