"""The training loop: one function, read top to bottom (NVlabs/edm2 ``training_loop.py``).

status -> resume -> data -> step -> EMA -> log -> checkpoint. Resume is running the same
command again. Every random choice of a step (noise, timesteps, condition and label dropout)
comes from a generator seeded by (seed, step) and is drawn for the whole optimizer batch, each
accumulation round and rank taking its rows, so one process with batch 2b, two processes with b
each, and two accumulation rounds of b compute the same update (up to float summation order),
and a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from diffusers import DDPMScheduler
from tqdm import tqdm

from microcond import config as config_mod
from microcond.checkpoint import (
    atomic_write_text,
    list_checkpoints,
    load_newest,
    optimizer_from_tensors,
    optimizer_to_tensors,
    remove_partial,
    save_checkpoint,
)
from microcond.conditions import MicroCondEmbedder
from microcond.config import TrainConfig
from microcond.model import ConditioningHealth, Denoiser, build_unet, param_groups

# Process settings for CPU training, applied by re-executing once (reference/cpu-measurements.md):
# glibc otherwise unmaps and re-faults large activation buffers every step; OpenMP threads that
# spin while waiting made bf16 steps 20-30x slower whenever another process held a core.
RUNTIME_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "OMP_WAIT_POLICY": "PASSIVE"}


class NonFiniteLoss(RuntimeError):
    """The loss or gradient became NaN or infinite; training stopped before applying that step."""


class BatchSource(Protocol):
    """What the loop needs from the data: batches (see microcond.data.loader) and a position."""

    def __iter__(self) -> Iterator[dict]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


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


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of one optimizer step: a pure function of (seed, step)."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def make_scheduler(cfg: TrainConfig) -> DDPMScheduler:
    """Discrete 1000-step DDPM (SDXL section 2.5) as diffusers defines it.

    Pixel-space samplers clip the predicted clean image to [-1, 1] (Ho et al. 2020, and
    diffusers' default); latents are unbounded, so the SDXL preset does not clip.
    """
    clip = cfg.preset != "sdxl"
    if cfg.beta_schedule == "scaled_linear":  # SDXL's betas
        return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=cfg.prediction_type, clip_sample=clip)
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type, clip_sample=clip)


def build_denoiser(cfg: TrainConfig) -> Denoiser:
    embedder = MicroCondEmbedder(signals=cfg.signals, dropout=cfg.cond_dropout)
    unet = build_unet(cfg.preset, cfg.resolution, embedder, cfg.pretrained)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return Denoiser(unet, embedder, cfg.num_classes, text=bool(cfg.text_encoders))


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


def diffusion_loss(
    model: torch.nn.Module,
    scheduler: DDPMScheduler,
    batch: dict,
    cfg: TrainConfig,
    generator: torch.Generator,
    rows: slice,
    step_batch: int,
    embedder: MicroCondEmbedder,
) -> torch.Tensor:
    """Noise the batch at random timesteps and return the mean squared error of the prediction.

    ``batch`` holds "pixels" (uint8) or "latents" (scaled VAE latents), and "context" and "pooled"
    when the run has text (see :class:`microcond.sdxl.SDXLInputs`).
    """
    device = batch["ids"].device
    x0 = batch["latents"] if "latents" in batch else batch["pixels"].float() / 127.5 - 1.0  # (b, C, H, W)
    b, c, h, w = x0.shape
    # Drawn for the whole optimizer batch, then this round's and rank's rows.
    noise = torch.randn(step_batch, c, h, w, generator=generator, device=device)[rows]  # (b, 3, H, W)
    if cfg.offset_noise:
        noise = noise + cfg.offset_noise * torch.randn(step_batch, c, 1, 1, generator=generator, device=device)[rows]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (step_batch,), generator=generator, device=device)[rows]
    drop = (torch.rand(step_batch, len(embedder.signal_names), generator=generator, device=device) < cfg.cond_dropout)[rows]
    labels = batch["labels"] if cfg.num_classes else torch.full((b,), -1, dtype=torch.long, device=device)
    label_drop = (torch.rand(step_batch, generator=generator, device=device) < cfg.class_dropout)[rows]
    labels = torch.where(label_drop, torch.full_like(labels, -1), labels)
    text = {}
    if "context" in batch:  # caption dropout: zero context and pooled (sgm ucg_rate), drawn after the rest
        keep = (torch.rand(step_batch, generator=generator, device=device) >= cfg.caption_dropout)[rows].float()  # (b,)
        text = {"context": batch["context"] * keep[:, None, None], "pooled": batch["pooled"] * keep[:, None]}
    xt = scheduler.add_noise(x0, noise, t)
    target = noise if cfg.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
    ids = embedder.select(batch["ids"])  # (b, 2 * n_signals)
    pred = model(xt, t, ids, drop, labels, **text)
    if not cfg.loss_weight_cap or cfg.prediction_type == "epsilon":  # epsilon weighs every level 1, under any cap
        return torch.nn.functional.mse_loss(pred.float(), target)
    # The v loss is 1 + 1/SNR = 1/alpha_bar times the epsilon loss; cap that factor so the noisiest
    # levels do not swamp the rest (cap 1 gives back the epsilon loss of the same prediction).
    weight = torch.clamp(cfg.loss_weight_cap * scheduler.alphas_cumprod.to(device)[t], max=1.0)  # (b,)
    per_sample = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


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


def keep_metrics_through(path: Path, step: int) -> None:
    """Keep the rows of metrics.jsonl up to ``step``, the checkpoint a run resumes from.

    The resumed run logs the later steps again; a line cut short by a kill goes too.
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    if kept != lines:
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def train(cfg: TrainConfig, run_dir: str | Path, data: BatchSource | None = None, progress: bool = True) -> dict:
    """Train (or resume) the run in ``run_dir``; returns the final metrics row.

    The run folder is locked for the whole training. Nothing but the lock is written into it before
    the data is open and holds a full batch, so a start that fails there leaves no config behind.
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
        embedder = model.embedder
        scheduler = make_scheduler(cfg)
        ema = {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
        health = ConditioningHealth(model.unet)
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
        bar = tqdm(total=cfg.steps, initial=start, disable=not progress or rank != 0, desc="train", unit="step", dynamic_ncols=True)
        row: dict = {}
        window_t, window_images, losses = time.perf_counter(), 0, []
        for step in range(start, cfg.steps):
            # Step: accumulate gradients over rounds, clip, update with warm-up.
            for group in optimizer.param_groups:
                group["lr"] = group.get("base_lr", cfg.lr) * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for round_ in range(cfg.grad_accumulation):
                batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
                if batch["ids"].shape[0] != per_rank:
                    raise RuntimeError(f"data yielded a batch of {batch['ids'].shape[0]}, expected {per_rank}")
                if stage is not None:
                    batch = stage.prepare(batch)  # latents (unless cached) and text, frozen encoders
                # The step's randomness covers all cfg.batch_size rows; this round and rank take theirs.
                generator = step_generator(cfg.seed, step, device)
                first = (round_ * world + rank) * per_rank
                rows = slice(first, first + per_rank)
                sync = round_ == cfg.grad_accumulation - 1 or world == 1
                context = ddp.no_sync() if not sync else contextlib.nullcontext()
                with context, torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                    loss = diffusion_loss(ddp, scheduler, batch, cfg, generator, rows, cfg.batch_size, embedder)
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
                row = {"step": done, "images_seen": done * cfg.batch_size, "loss": float(np.mean(losses)), "grad_norm": float(grad_norm), "lr": optimizer.param_groups[0]["lr"], "images_per_s": window_images / max(elapsed, 1e-9), **health.report()}
                if rank == 0:
                    with open(metrics_path, "a") as fh:
                        fh.write(metrics_line(row) + "\n")
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
                window_t, window_images, losses = time.perf_counter(), 0, []
            bar.update(1)

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
        return row


def metrics_line(row: dict) -> str:
    """One line of metrics.jsonl: strict JSON, a non-finite number written as null."""
    return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}, allow_nan=False)


def plot_loss(metrics_path: Path, out: Path) -> None:
    """Loss against images seen, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] if metrics_path.exists() else []
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["images_seen"] for r in rows], [math.nan if r["loss"] is None else r["loss"] for r in rows], lw=1)
    ax.set_xlabel("images seen")
    ax.set_ylabel("training loss (MSE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title(f"{metrics_path.parent.name}: loss at step {rows[-1]['step']}")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)


def write_sample_grid(model: Denoiser, ema: dict, scheduler: DDPMScheduler, cfg: TrainConfig, path: Path, device: torch.device, stage=None) -> None:
    """16 samples from the EMA weights with SDXL's default inference conditions, one class per column.

    With a VAE the samples are latents decoded by it; with text all share one training caption.
    """
    from microcond.conditions import MicroCond
    from microcond.grid import save_grid
    from microcond.runs import denoise_fn
    from microcond.sample import make_cond, sample

    shadow = build_denoiser(cfg).to(device)
    shadow.load_state_dict({**model.state_dict(), **{k: v.to(model.state_dict()[k].dtype) for k, v in ema.items()}})
    shadow.eval()
    n = 16
    size = (cfg.resolution, cfg.resolution)
    labels = [i % cfg.num_classes for i in range(n)] if cfg.num_classes else [-1] * n
    cond = make_cond(MicroCond(size, (0, 0), size), labels, n=n)
    latents = stage is not None and stage.latent_space is not None
    shape = stage.latent_space.latent_shape(size) if latents else (3, *size)
    denoise = denoise_fn(shadow, choose_precision(cfg.precision, device), text=stage.grid_text() if stage is not None else None)
    images = sample(denoise, cond, shape=shape, seeds=range(n), steps=25, scheduler_config=dict(scheduler.config), clamp=not latents, device=device, progress=False)
    if latents:
        images = torch.cat([stage.latent_space.decode(images[k:k + 4].to(device)).cpu() for k in range(0, n, 4)])  # (n, 3, H, W)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, path, nrow=8)
