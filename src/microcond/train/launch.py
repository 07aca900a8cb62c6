"""Process concerns of training and sampling, apart from the loop: the re-exec with allocator and
OpenMP settings, the precision choice, the process layout on CPU (how many processes and threads
the free cores allow) and the local launch of its processes, the torchrun process group, a
rank-0-first helper for work that writes shared files, and the run folder's lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import torch

from microcond.base.children import die_with_parent

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


def free_cores(interval: float = 0.25) -> int:
    """Cores this process can use that other processes are not busy on.

    The affinity mask (``taskset``, cgroup cpusets) and a cgroup CPU quota bound it; the load of
    the allowed cores over ``interval`` seconds (``/proc/stat``) is taken off, so a busy process
    beside us costs one core instead of making our threads wait on each other.
    """
    allowed = sorted(os.sched_getaffinity(0))
    limit = len(allowed)
    with contextlib.suppress(OSError, ValueError):
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            limit = min(limit, max(1, int(int(quota) / int(period))))

    def times() -> dict[int, tuple[int, int]]:
        out = {}
        for line in open("/proc/stat"):
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                ticks = [int(f) for f in fields[:8]]
                out[int(name[3:])] = (sum(ticks), ticks[3] + ticks[4])  # (total, idle + iowait)
        return out

    try:
        before = times()
        time.sleep(interval)
        after = times()
    except (OSError, ValueError):
        return limit
    return cores_left(before, after, allowed, limit)


def cores_left(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], allowed: list[int], limit: int) -> int:
    """Allowed cores less the busy ones between two ``/proc/stat`` readings ({cpu: (total ticks,
    idle ticks)}), within ``limit`` and at least 1."""
    busy = 0.0
    for cpu in allowed:
        if cpu in before and cpu in after and after[cpu][0] > before[cpu][0]:
            total, idle = after[cpu][0] - before[cpu][0], after[cpu][1] - before[cpu][1]
            busy += 1 - idle / total
    return max(1, min(limit, len(allowed) - round(busy)))


def plan_layout(cores: int, batch_size: int, grad_accumulation: int = 1, max_processes: int = 8) -> tuple[int, int]:
    """(processes, threads each) for CPU training on ``cores`` free cores.

    Data parallel first: a small model's step does not speed up with a second thread (150 tiny
    steps: 55.2 s on 2 threads, 55.5 s on 1), but two processes with half the batch each do the
    same update in about half the time. The process count divides the batch (DDP splits it).
    """
    fits = [p for p in range(1, max(1, min(cores, max_processes)) + 1) if batch_size % (p * grad_accumulation) == 0]
    processes = max(fits)
    return processes, max(1, cores // processes)


def launch_local(argv: list[str], processes: int, threads: int) -> int:
    """Run ``python -m microcond.cli ARGV`` as ``processes`` DDP ranks on this machine (what
    ``torchrun --standalone`` does), ``threads`` each; returns the first failing exit code, else 0.

    The ranks die with this process (a killed launcher leaves no rank holding the run's lock), and
    when one rank fails the others, which would wait for it forever, are stopped.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(processes),
            "LOCAL_WORLD_SIZE": str(processes), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    ranks = [subprocess.Popen([sys.executable, "-m", "microcond.cli", *argv], preexec_fn=die_with_parent,
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(processes)]
    try:
        while True:
            codes = [rank.poll() for rank in ranks]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                return _rank_failure(*failed[0])
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.terminate()
        for rank in ranks:
            rank.wait()


def _rank_failure(rank: int, code: int) -> int:
    """One line naming the first rank that ended badly; the launcher's exit code: 2 for a usage
    error of the rank, else 1 (never a signal's negative number)."""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        print(f"train: rank {rank} was killed by {name}; the other ranks were stopped (rerun the same command to resume)", file=sys.stderr)
        return 1
    print(f"train: rank {rank} failed (exit {code}); the other ranks were stopped", file=sys.stderr)
    return 2 if code == 2 else 1


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
