"""Sampler overhead: ``sample()`` against the same number of bare denoiser calls.

The denoiser is a small conv net (about 20 k parameters) at 32 px, so the scheduler, the
per-row guidance batching and the per-sample noise are visible against it. Baseline: the same
denoiser called ``steps`` times on a (2B, 3, 32, 32) batch with nothing else. Prints one JSON
line per configuration (median of ``--repeats``, images/s, peak RSS); about a minute by default.

    .venv/bin/python benchmarks/bench_sample.py
    .venv/bin/python benchmarks/bench_sample.py --n 256 --steps 50
"""

from __future__ import annotations

import argparse
import json
import platform
import resource

import torch
from common import timed
from torch import nn

from microcond import MicroCond
from microcond.sample.samplers import Cond, make_cond, sample, uncond_for


class ConvDenoiser(nn.Module):
    """A few 3x3 convs with the timestep and label added as a bias: cost without a UNet."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, width, 3, padding=1)
        self.mid = nn.Sequential(*[m for _ in range(2) for m in (nn.Conv2d(width, width, 3, padding=1), nn.SiLU())])
        self.out = nn.Conv2d(width, 3, 3, padding=1)
        self.label = nn.Embedding(11, width)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        h = self.inp(x) + (t[:, None, None, None] / 1000) + self.label(cond.labels + 1)[:, :, None, None]
        return self.out(self.mid(h))


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {"device": "cpu", "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    torch.manual_seed(0)
    net = ConvDenoiser().eval()
    cond = make_cond(MicroCond((32, 32), (0, 0), (32, 32)), labels=3, n=args.n)
    uncond = uncond_for(cond, null_micro=True)

    def bare(guided: bool) -> None:
        rows = 2 * args.n if guided else args.n
        x = torch.randn(rows, 3, 32, 32)
        c = cond.cat(uncond) if guided else cond
        for step in range(args.steps):
            net(x, torch.full((rows,), 999 - step, dtype=torch.int64), c)

    def emit(name: str, seconds: float, **extra) -> None:
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"bench": name, "median_s": round(seconds, 4), "images_per_s": round(args.n / seconds, 1),
                          "n": args.n, "steps": args.steps, "peak_rss_mb": round(rss_mb, 1), **extra, **env}), flush=True)

    for guided in (False, True):
        tag = "guided" if guided else "unguided"
        emit(f"baseline_bare_denoiser_{tag}", timed(lambda: bare(guided), args.repeats))
        for scheduler in ("ddim", "euler"):
            run = lambda: sample(net, cond, shape=(3, 32, 32), seeds=range(args.n), scheduler=scheduler, steps=args.steps,
                                 guidance=3.0 if guided else 1.0, uncond=uncond, batch_size=args.n, progress=False)
            emit(f"sample_{scheduler}_{tag}", timed(run, args.repeats))


if __name__ == "__main__":
    main()
