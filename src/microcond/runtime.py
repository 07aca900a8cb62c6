"""Process concerns of training and sampling, apart from the loop: the re-exec with allocator and
OpenMP settings, the precision choice, the torchrun process group, a rank-0-first helper for work
that writes shared files, and the run folder's lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path
from typing import Iterator

import torch

# Process settings for CPU training, applied by re-executing once (reference/cpu-measurements.md):
# glibc otherwise unmaps and re-faults large activation buffers every step; OpenMP threads that
# spin while waiting made bf16 steps 20-30x slower whenever another process held a core.
RUNTIME_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "OMP_WAIT_POLICY": "PASSIVE"}


def ensure_runtime_env(argv: list[str]) -> None:
    """Re-execute once with RUNTIME_ENV's settings that the user has not set themselves.

    Set MICROCOND_NO_REEXEC=1 to opt out.
    """
    missing = {k: v for k, v in RUNTIME_ENV.items() if k not in os.environ}
    if os.environ.get("MICROCOND_NO_REEXEC") or not missing:
        return
    os.environ.update(missing)
    os.execv(sys.executable, [sys.executable, "-m", "microcond.cli", *argv])


def choose_precision(setting: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware runs it fast (AVX-512 BF16 / AMX on CPU), else fp32 (None)."""
    if setting == "fp32":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    fast = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if fast else None


def distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


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


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN/.lock`` (``flock``) while training: a second training on the same folder is refused.

    The kernel drops the lock when its process ends, however it ends, so a killed run's lock is
    taken over by the next start. The file holds the holder's pid, for the refusal's message.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(f"{run_dir} is being trained by another process (pid {holder}); wait for it to end or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
