"""The training loop: one function, read top to bottom (NVlabs/edm2 ``training_loop.py``).

status -> resume -> data -> step -> EMA -> log -> checkpoint -> maintenance. The loop knows no
model family: the caller passes its inputs (:class:`PixelInputs`, or the SDXL stage's latents and
text), and the loss object is :class:`microcond.train.loss.DiffusionLoss`. Resume is running the same
command again. Every random choice of a step (noise, timesteps, condition and label dropout)
comes from a generator seeded by (seed, step) and is drawn for the whole optimizer batch, each
accumulation round and rank taking its rows, so one process with batch 2b, two processes with b
each, and two accumulation rounds of b compute the same update (up to float summation order),
and a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from tqdm import tqdm

from microcond.base.files import atomic_write_text
from microcond.model import ConditioningHealth, build_denoiser, load_trained, param_groups, trained_state
from microcond.train import config as config_mod
from microcond.train.batch import Batch, pixel_batch
from microcond.train.checkpoint import (
    list_checkpoints,
    load_newest,
    optimizer_from_tensors,
    optimizer_to_tensors,
    remove_partial,
    save_checkpoint,
)
from microcond.train.config import TrainConfig
from microcond.train.launch import choose_precision, distributed, run_lock
from microcond.train.loss import DiffusionLoss
from microcond.train.monitor import TensorBoard, keep_metrics_through, metrics_line, plot_loss


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


class Inputs(Protocol):
    """What stands between the data and the denoiser (edm2's encoder): pixels as they are, or the
    SDXL stage's VAE latents and text (:class:`microcond.sdxl.SDXLInputs`). The caller chooses."""

    def check(self, model: torch.nn.Module) -> None: ...  # refuse a denoiser these inputs do not fit
    def prepare(self, batch: dict) -> Batch: ...
    def open_data(self, run_dir: Path, *, rank: int, world_size: int, batch_size: int) -> BatchSource: ...


class PixelInputs:
    """Pixels straight from the data: the pixel presets' inputs."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg = cfg

    def check(self, model: torch.nn.Module) -> None:
        if self.cfg.vae or self.cfg.text_encoders:
            raise ValueError("a config with vae or text_encoders trains on the SDXL stage's inputs: pass inputs=SDXLInputs "
                             "(microcond.sdxl), as `microcond train` does")

    def prepare(self, batch: dict) -> Batch:
        return pixel_batch(batch)

    def open_data(self, run_dir: Path, *, rank: int, world_size: int, batch_size: int) -> BatchSource:
        from microcond.data.loader import open_training_data

        return open_training_data(self.cfg, run_dir, rank=rank, world_size=world_size, batch_size=batch_size)


def lr_at(step: int, group: dict, cfg: TrainConfig) -> float:
    """The learning rate of a parameter group at ``step`` (0-based): its base rate after a linear
    warm-up over ``warmup_steps``, constant after."""
    return group["base_lr"] * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trained parameters (:func:`microcond.model.param_groups`), or bitsandbytes'
    AdamW with 8-bit moments for ``optimizer = "adamw8bit"``."""
    groups = param_groups(model, cfg)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise ValueError("--optimizer adamw8bit needs bitsandbytes, which is not installed: pip install bitsandbytes "
                             "(a GPU build), or use --optimizer adamw") from None
        return bitsandbytes.optim.AdamW8bit(groups, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)


def ema_device(cfg: TrainConfig, device: torch.device) -> torch.device | None:
    """Where the EMA weights live: beside the model, on the CPU, or nowhere (``ema = "off"``)."""
    return {"device": device, "cpu": torch.device("cpu"), "off": None}[cfg.ema]


def train(cfg: TrainConfig, run_dir: str | Path, data: BatchSource | None = None, progress: bool = True,
          inputs: Callable[[TrainConfig, torch.device], Inputs] = PixelInputs,
          sample_grid: Callable[..., None] | None = None) -> dict:
    """Train (or resume) the run in ``run_dir``; returns the final metrics row.

    Args:
        data: batches (default: what ``inputs`` opens for the config).
        inputs: builds the loop's inputs for the config and device (:class:`PixelInputs`, or
            :class:`microcond.sdxl.SDXLInputs` for SDXL fine-tuning).
        sample_grid: called every ``sample_every`` steps on rank 0 as ``sample_grid(model=, ema=,
            scheduler=, cfg=, path=, device=, stage=)`` (:class:`microcond.sample.grid.TrainingGrids`);
            None writes no grids.

    The run folder is locked for the whole training. Nothing but the lock and the data's report
    (data.json, which says why data was refused) is written into it before the data is open and
    holds a full batch, so a start that fails there leaves no config behind.
    """
    run_dir = Path(run_dir)
    rank, world, device = distributed()
    if device.type == "cuda":  # TF32 matmuls and convolutions on GPUs that have them (diffusers' attention is already SDPA)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
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
        stage = inputs(cfg, device)
        stage.check(model)
        loss_fn = DiffusionLoss(cfg)
        scheduler = loss_fn.scheduler
        lora, ema_at = bool(cfg.lora_rank), ema_device(cfg, device) if rank == 0 else None  # rank 0 alone saves and samples the EMA
        ema = {} if ema_at is None else {k: v.detach().float().to(ema_at, copy=True) for k, v in trained_state(model, lora).items() if v.is_floating_point()}
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(model, cfg)
        health = ConditioningHealth(model)
        if data is None:
            data = stage.open_data(run_dir, rank=rank, world_size=world, batch_size=per_rank)  # refuses a batch larger than the data
        if rank == 0:
            atomic_write_text(config_path, json.dumps(config_mod.to_dict(cfg), indent=2) + "\n")
            atomic_write_text(run_dir / "scheduler_config.json", json.dumps(dict(scheduler.config), indent=2) + "\n")

        # Resume from the newest checkpoint that verifies; its metrics rows are the only ones kept.
        start = 0
        newest = load_newest(ckpt_root, stems=("model", "ema", "optimizer"), keys=("param_groups", "data"))
        if newest is not None:
            _, tensors, state = newest
            load_trained(model, tensors["model"], lora)
            ema = {} if ema_at is None else {k: v.to(ema_at) for k, v in tensors["ema"].items()}
            optimizer_from_tensors(optimizer, tensors["optimizer"], state["param_groups"])
            data.load_state_dict(state["data"])
            start = state["step"]
        metrics_path = run_dir / "metrics.jsonl"
        board = None
        if rank == 0:
            keep_metrics_through(metrics_path, start)
            board = TensorBoard(run_dir / "tensorboard", start) if cfg.log_to == "tensorboard" else None
        ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
        autocast = choose_precision(cfg.precision, device)
        batches = iter(data)
        bar = tqdm(total=cfg.steps * cfg.batch_size, initial=start * cfg.batch_size, disable=not progress or rank != 0, desc="train",
                   unit="img", unit_scale=True, dynamic_ncols=True)  # progress in images seen
        row: dict = {}
        warned = False  # a dying conditioning path is reported once per start
        window_t, window_images, losses = time.perf_counter(), 0, []
        maintenance = 0.0  # seconds of checkpoints and sample grids in the window: not training time
        for step in range(start, cfg.steps):
            # Step: accumulate gradients over rounds, clip, update with warm-up.
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, group, cfg)
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for round_ in range(cfg.grad_accumulation):
                batch = stage.prepare({k: v.to(device, non_blocking=True) for k, v in next(batches).items()})
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
                    v.lerp_(current[k].float().to(v.device), 1 - decay)

            # Log.
            losses.append(step_loss)
            window_images += cfg.batch_size
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                training_s = time.perf_counter() - window_t - maintenance
                window_loss = torch.tensor(float(np.mean(losses)), dtype=torch.float64, device=device)
                if world > 1:  # each rank saw its rows: the logged loss is the whole batch's
                    torch.distributed.all_reduce(window_loss)
                    window_loss /= world
                row = {"step": done, "images_seen": done * cfg.batch_size, "loss": window_loss.item(), "grad_norm": float(grad_norm),
                       "lr": optimizer.param_groups[0]["lr"], "images_per_s": window_images / max(training_s, 1e-9),
                       "maintenance_s": maintenance, **health.report({**model.state_dict(), **ema})}
                if device.type == "cuda":  # this rank's peak since the start, for checking the memory plan
                    row["gpu_peak_bytes"] = torch.cuda.max_memory_allocated(device)
                if rank == 0:
                    with open(metrics_path, "a") as fh:
                        fh.write(metrics_line(row) + "\n")
                    if board is not None:
                        board.scalars(row)
                    if (warning := health.warning(row)) and not warned:
                        tqdm.write(warning, file=sys.stderr)
                        warned = True
                bar.set_postfix(step=done, loss=f"{row['loss']:.4f}")
                window_t, window_images, losses, maintenance = time.perf_counter(), 0, [], 0.0
            bar.update(cfg.batch_size)

            # Checkpoint and sample grid, the maintenance (rank 0 writes; every rank holds identical weights).
            checkpoint_due = done % cfg.checkpoint_every == 0 or done == cfg.steps
            grid_due = rank == 0 and sample_grid is not None and cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps)
            started = time.perf_counter()
            if checkpoint_due:
                if rank == 0:
                    opt_tensors, groups = optimizer_to_tensors(optimizer)
                    tensors = {"model": trained_state(model, lora), "ema": ema, "optimizer": opt_tensors}
                    save_checkpoint(ckpt_root, done, tensors, {"param_groups": groups, "data": data.state_dict(), "config": config_mod.to_dict(cfg)}, cfg.keep_checkpoints)
                    plot_loss(metrics_path, run_dir / "loss.png")
                if world > 1:
                    torch.distributed.barrier()
            if grid_due:
                grid_path = run_dir / "samples" / f"step-{done:08d}.png"
                sample_grid(model=model, ema=ema, scheduler=scheduler, cfg=cfg, path=grid_path, device=device, stage=stage)
                if board is not None:
                    board.image(grid_path, done)
            if checkpoint_due or grid_due:
                maintenance += time.perf_counter() - started  # reported apart from images/s
        bar.close()
        if board is not None:
            board.close()
        from microcond.data.loader import report_skips

        skipped = report_skips(data, run_dir, rank, world, device)  # a collective: every rank calls it
        return {**row, "samples_skipped": skipped} if row else row


