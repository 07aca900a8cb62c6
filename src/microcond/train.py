"""The training loop: one function, read top to bottom (NVlabs/edm2 ``training_loop.py``).

status -> resume -> data -> step -> EMA -> log -> checkpoint. The loop knows no model family:
it takes the denoiser, one ``prepare(raw batch) -> Batch`` step (pixels, or the SDXL stage's
latents and text) and the loss object (:class:`microcond.loss.DiffusionLoss`). Resume is running the same
command again. Every random choice of a step (noise, timesteps, condition and label dropout)
comes from a generator seeded by (seed, step) and is drawn for the whole optimizer batch, each
accumulation round and rank taking its rows, so one process with batch 2b, two processes with b
each, and two accumulation rounds of b compute the same update (up to float summation order),
and a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from tqdm import tqdm

from microcond import config as config_mod
from microcond.batch import pixel_batch
from microcond.checkpoint import (
    atomic_write_text,
    list_checkpoints,
    load_newest,
    optimizer_from_tensors,
    optimizer_to_tensors,
    remove_partial,
    save_checkpoint,
)
from microcond.config import TrainConfig
from microcond.loss import DiffusionLoss
from microcond.model import ConditioningHealth, build_denoiser, param_groups
from microcond.monitor import keep_metrics_through, metrics_line, plot_loss, write_sample_grid
from microcond.runtime import choose_precision, distributed, run_lock


class NonFiniteLoss(RuntimeError):
    """The loss or gradient became NaN or infinite; training stopped before applying that step."""


class BatchSource(Protocol):
    """What the loop needs from the data: batches (see microcond.data.loader) and a position."""

    def __iter__(self) -> Iterator[dict]: ...  # raw batches: "pixels" or "latents", "ids", "labels", "index"
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of one optimizer step: a pure function of (seed, step)."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def train(cfg: TrainConfig, run_dir: str | Path, data: BatchSource | None = None, progress: bool = True) -> dict:
    """Train (or resume) the run in ``run_dir``; returns the final metrics row.

    The run folder is locked for the whole training. Nothing but the lock and the data's report
    (data.json, which says why data was refused) is written into it before the data is open and
    holds a full batch, so a start that fails there leaves no config behind.
    """
    run_dir = Path(run_dir)
    rank, world, device = distributed()
    per_rank, rest = divmod(cfg.batch_size, world * cfg.grad_accumulation)
    if rest or per_rank == 0:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of world size {world} x grad_accumulation {cfg.grad_accumulation}")

    with run_lock(run_dir) if rank == 0 else contextlib.nullcontext():
        # Status: a run that has checkpoints continues only with the config it was trained with.
        ckpt_root = run_dir / "checkpoints"
        config_path = run_dir / "config.json"
        if rank == 0:
            remove_partial(ckpt_root)
            if config_path.exists() and list_checkpoints(ckpt_root):
                try:
                    old = config_mod.from_dict(json.loads(config_path.read_text()))
                except ValueError as err:
                    raise ValueError(f"{config_path} holds a config this version refuses ({err}); use a new --out") from None
                changed = config_mod.differing_fields(old, cfg)
                if changed:
                    details = ", ".join(f"{k}: {getattr(old, k)!r} -> {getattr(cfg, k)!r}" for k in changed)
                    raise ValueError(f"{run_dir} was trained with a different config ({details}); use a new --out or the same settings")
        torch.manual_seed(cfg.seed)  # model initialisation: the same on every rank
        model = build_denoiser(cfg).to(device)
        stage = None  # SDXL fine-tuning: VAE latents and text encoders around the UNet
        if cfg.vae or cfg.text_encoders:
            from microcond.sdxl import SDXLInputs

            stage = SDXLInputs(cfg, device)
            stage.check(model)
        loss_fn = DiffusionLoss(cfg)
        scheduler = loss_fn.scheduler
        prepare = stage.prepare if stage is not None else pixel_batch  # the loop knows no model family
        ema = {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
        health = ConditioningHealth(model)
        if data is None:
            from microcond.data.loader import open_training_data

            opener = stage.open_data if stage is not None else functools.partial(open_training_data, cfg)
            data = opener(run_dir, rank=rank, world_size=world, batch_size=per_rank)  # refuses a batch larger than the data
        if rank == 0:
            atomic_write_text(config_path, json.dumps(config_mod.to_dict(cfg), indent=2) + "\n")
            atomic_write_text(run_dir / "scheduler_config.json", json.dumps(dict(scheduler.config), indent=2) + "\n")

        # Resume from the newest checkpoint that verifies; its metrics rows are the only ones kept.
        start = 0
        newest = load_newest(ckpt_root, stems=("model", "ema", "optimizer"), keys=("param_groups", "data"))
        if newest is not None:
            _, tensors, state = newest
            model.load_state_dict(tensors["model"])
            ema = {k: v.to(device) for k, v in tensors["ema"].items()}
            optimizer_from_tensors(optimizer, tensors["optimizer"], state["param_groups"])
            data.load_state_dict(state["data"])
            start = state["step"]
        metrics_path = run_dir / "metrics.jsonl"
        if rank == 0:
            keep_metrics_through(metrics_path, start)
        ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
        autocast = choose_precision(cfg.precision, device)
        batches = iter(data)
        bar = tqdm(total=cfg.steps * cfg.batch_size, initial=start * cfg.batch_size, disable=not progress or rank != 0, desc="train",
                   unit="img", unit_scale=True, dynamic_ncols=True)  # progress in images seen
        row: dict = {}
        warned = False  # a dying conditioning path is reported once per start
        window_t, window_images, losses = time.perf_counter(), 0, []
        for step in range(start, cfg.steps):
            # Step: accumulate gradients over rounds, clip, update with warm-up.
            for group in optimizer.param_groups:
                group["lr"] = group.get("base_lr", cfg.lr) * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for round_ in range(cfg.grad_accumulation):
                batch = prepare({k: v.to(device, non_blocking=True) for k, v in next(batches).items()})
                if len(batch) != per_rank:
                    raise RuntimeError(f"data yielded a batch of {len(batch)}, expected {per_rank}")
                # The step's randomness covers all cfg.batch_size rows; this round and rank take theirs.
                generator = step_generator(cfg.seed, step, device)
                first = (round_ * world + rank) * per_rank
                rows = slice(first, first + per_rank)
                sync = round_ == cfg.grad_accumulation - 1 or world == 1
                context = ddp.no_sync() if not sync else contextlib.nullcontext()
                with context, torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                    loss = loss_fn(ddp, batch, generator, rows, cfg.batch_size)
                    (loss / cfg.grad_accumulation).backward()
                step_loss += loss.item() / cfg.grad_accumulation
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            # The gradient norm is the same on every rank (all-reduced), so all ranks stop together.
            if not (math.isfinite(step_loss) and math.isfinite(float(grad_norm))):
                raise NonFiniteLoss(f"non-finite loss at step {step + 1} (loss {step_loss}, gradient norm {float(grad_norm)}); stopped before "
                                    f"the update, nothing saved or pruned in {ckpt_root}; lower --lr, or check the data and the checkpoint of step {start}")
            optimizer.step()

            # EMA with the usual warm-up of the decay, in float32.
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                current = model.state_dict()
                for k, v in ema.items():
                    v.lerp_(current[k].float(), 1 - decay)

            # Log.
            losses.append(step_loss)
            window_images += cfg.batch_size
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - window_t
                window_loss = torch.tensor(float(np.mean(losses)), dtype=torch.float64, device=device)
                if world > 1:  # each rank saw its rows: the logged loss is the whole batch's
                    torch.distributed.all_reduce(window_loss)
                    window_loss /= world
                row = {"step": done, "images_seen": done * cfg.batch_size, "loss": window_loss.item(), "grad_norm": float(grad_norm), "lr": optimizer.param_groups[0]["lr"], "images_per_s": window_images / max(elapsed, 1e-9), **health.report(ema)}
                if rank == 0:
                    with open(metrics_path, "a") as fh:
                        fh.write(metrics_line(row) + "\n")
                    if (warning := health.warning(row)) and not warned:
                        tqdm.write(warning, file=sys.stderr)
                        warned = True
                bar.set_postfix(step=done, loss=f"{row['loss']:.4f}")
                window_t, window_images, losses = time.perf_counter(), 0, []
            bar.update(cfg.batch_size)

            # Checkpoint (rank 0 writes; every rank holds identical weights).
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                if rank == 0:
                    opt_tensors, groups = optimizer_to_tensors(optimizer)
                    tensors = {"model": model.state_dict(), "ema": ema, "optimizer": opt_tensors}
                    save_checkpoint(ckpt_root, done, tensors, {"param_groups": groups, "data": data.state_dict(), "config": config_mod.to_dict(cfg)}, cfg.keep_checkpoints)
                    plot_loss(metrics_path, run_dir / "loss.png")
                if world > 1:
                    torch.distributed.barrier()
            if rank == 0 and cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps):
                write_sample_grid(model, ema, scheduler, cfg, run_dir / "samples" / f"step-{done:08d}.png", device, stage)
        bar.close()
        from microcond.data.loader import report_skips

        skipped = report_skips(data, run_dir, rank, world, device)  # a collective: every rank calls it
        return {**row, "samples_skipped": skipped} if row else row


