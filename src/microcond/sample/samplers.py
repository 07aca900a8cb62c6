"""Samplers over any ``denoise(x, t, cond)`` callable: DDIM and Euler, guidance, sweeps.

A denoiser takes ``x`` (B, C, H, W) float32, ``t`` (B,) int64 timesteps of the 1000-step
training schedule and a :class:`Cond`, and returns the model output (epsilon or v, as the
scheduler config's ``prediction_type`` says). The samplers are diffusers' ``DDIMScheduler``
(eta 0) and ``EulerDiscreteScheduler`` (no churn), both built from the training run's
``DDPMScheduler`` config, so the trained schedule is reused. Both are deterministic given the
initial noise, and sample ``i``'s noise comes from ``torch.Generator().manual_seed(seeds[i])``
alone: an image never depends on the batch size or on how many images are drawn.

Classifier-free guidance (Ho & Salimans 2022) evaluates the conditional rows and their
unconditional partners in one batch stacked as ``[cond; uncond]``, so row ``i`` of the second
half is always the partner of row ``i`` (diffusers' SDXL pipeline stacks ``[neg, pos]`` and then
repeats per image, which mis-pairs rows when negatives differ across a batch). Micro-condition
guidance adds a third block, the content with the negative micro-conditions, and gives the
micro-conditions their own scale (:func:`microcond.cond.guidance.combine_guidance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from torch import Tensor
from tqdm.auto import tqdm

from microcond.cond.embedder import SIGNALS, MicroCond, resized_size, time_ids
from microcond.cond.guidance import combine_guidance

SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}
PREDICTION_TYPES = ("epsilon", "v_prediction")
# diffusers' DDPMScheduler defaults (Ho et al. 2020): used for keys the caller's config lacks.
DEFAULT_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
}
NULL_LABEL = -1


@dataclass(frozen=True)
class Cond:
    """Conditions of a batch, one row per sample.

    Attributes:
        ids: (B, 6) int64 SDXL micro-condition ids (:func:`microcond.cond.embedder.time_ids`).
        drop: (B, n_signals) bool, True where a signal is replaced by the null (zero) embedding.
        labels: (B,) int64 class ids; ``-1`` is the null class (unconditional).
    """

    ids: Tensor
    drop: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        n = self.ids.shape[0] if self.ids.ndim == 2 else -1
        if self.ids.ndim != 2 or self.ids.shape[1] != 6 or self.ids.dtype != torch.int64:
            raise ValueError(f"Cond.ids must be (B, 6) int64, got {tuple(self.ids.shape)} {self.ids.dtype}")
        if self.drop.ndim != 2 or self.drop.shape[0] != n or self.drop.dtype != torch.bool:
            raise ValueError(f"Cond.drop must be ({n}, n_signals) bool, got {tuple(self.drop.shape)} {self.drop.dtype}")
        if self.labels.shape != (n,) or self.labels.dtype != torch.int64:
            raise ValueError(f"Cond.labels must be ({n},) int64, got {tuple(self.labels.shape)} {self.labels.dtype}")

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, rows: slice | Tensor) -> Cond:
        return Cond(self.ids[rows], self.drop[rows], self.labels[rows])

    def cat(self, other: Cond) -> Cond:
        """Rows of ``self`` followed by rows of ``other``."""
        if other.drop.shape[1] != self.drop.shape[1]:
            raise ValueError(f"cannot join Conds with {self.drop.shape[1]} and {other.drop.shape[1]} signals")
        return Cond(
            torch.cat([self.ids, other.ids.to(self.ids.device)]),
            torch.cat([self.drop, other.drop.to(self.drop.device)]),
            torch.cat([self.labels, other.labels.to(self.labels.device)]),
        )

    def to(self, device: torch.device | str) -> Cond:
        return Cond(self.ids.to(device), self.drop.to(device), self.labels.to(device))


def _broadcast(values: Sequence | object, n: int, name: str) -> list:
    """A list of ``n`` values from one value or a sequence of length 1 or ``n``."""
    seq = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(seq) == 1:
        seq = seq * n
    if len(seq) != n:
        raise ValueError(f"{name} needs 1 or {n} values (one per sample), got {len(seq)}")
    return seq


def make_cond(
    micro: MicroCond | Sequence[MicroCond],
    labels: int | Sequence[int] = NULL_LABEL,
    *,
    n: int | None = None,
    drop: bool | Sequence[bool] = False,
    n_signals: int = len(SIGNALS),
) -> Cond:
    """Build a :class:`Cond` from micro-conditions and class labels, one row per sample.

    A single ``MicroCond``, label or ``drop`` flag is repeated over ``n`` rows (default: the
    longest of the inputs). ``drop=True`` gives the null micro-condition (every signal zeroed).
    """
    micro_seq = [micro] if isinstance(micro, MicroCond) else list(micro)
    label_seq = [labels] if isinstance(labels, int) else list(labels)
    drop_seq = [drop] if isinstance(drop, bool) else list(drop)
    n = n or max(len(micro_seq), len(label_seq), len(drop_seq))
    micro_seq = _broadcast(micro_seq, n, "micro-conditions")
    label_seq = _broadcast(label_seq, n, "class labels")
    drop_seq = _broadcast(drop_seq, n, "drop flags")
    bad = [v for v in label_seq if int(v) < NULL_LABEL]
    if bad:
        raise ValueError(f"class labels must be >= 0, or -1 for the null class; got {bad[0]}")
    return Cond(
        ids=time_ids(micro_seq),  # (n, 6)
        drop=torch.tensor(drop_seq, dtype=torch.bool)[:, None].expand(n, n_signals).clone(),  # (n, n_signals)
        labels=torch.tensor([int(v) for v in label_seq], dtype=torch.int64),  # (n,)
    )


def uncond_for(
    cond: Cond,
    *,
    negative: MicroCond | Sequence[MicroCond] | None = None,
    null_micro: bool = False,
    keep_class: bool = False,
) -> Cond:
    """The guidance partner of each row of ``cond``.

    Default (as SDXL): the same micro-conditions with the null class. ``negative`` replaces
    the micro-conditions (one per row, or one for all), ``null_micro`` zeroes them (the dropped
    condition the model was trained with), ``keep_class`` guides on micro-conditions only.
    """
    if negative is not None and null_micro:
        raise ValueError("choose either negative micro-conditions or the null micro-condition, not both")
    if keep_class and negative is None and not null_micro:
        raise ValueError("keep_class without negative or null micro-conditions makes the partner equal to the condition")
    ids, drop = cond.ids, cond.drop
    if negative is not None:
        ids = time_ids(_broadcast([negative] if isinstance(negative, MicroCond) else negative, len(cond), "negative micro-conditions"))
    if null_micro:
        drop = torch.ones_like(cond.drop)
    labels = cond.labels if keep_class else torch.full_like(cond.labels, NULL_LABEL)
    return Cond(ids.to(cond.ids.device), drop, labels)


def guidance_partners(cond: Cond, guidance: float, negative: MicroCond | Sequence[MicroCond] | None = None,
                      null_micro: bool = False, micro_guidance: float | None = None) -> dict[str, Cond | float | None]:
    """``uncond``, ``micro_uncond`` and ``micro_guidance`` for :func:`sample`, from the user's choices.

    Micro-condition guidance needs micro-conditions to guide away from: the ``negative`` ones,
    else the null micro-condition (what condition dropout trained).
    """
    if micro_guidance is None:
        return {"uncond": uncond_for(cond, negative=negative, null_micro=null_micro) if guidance != 1.0 else None}
    null_micro = null_micro or negative is None
    return {"uncond": uncond_for(cond, negative=negative, null_micro=null_micro),
            "micro_uncond": uncond_for(cond, negative=negative, null_micro=null_micro, keep_class=True),
            "micro_guidance": micro_guidance}


def make_scheduler(
    name: Literal["ddim", "euler"],
    steps: int,
    scheduler_config: dict | None = None,
    timestep_spacing: str | None = "trailing",
) -> DDIMScheduler | EulerDiscreteScheduler:
    """A diffusers sampler on the training schedule, with ``steps`` inference steps set.

    ``timestep_spacing="trailing"`` (Lin et al. 2024, Table 2) starts at the last training step,
    where the initial noise matches the schedule; ``None`` keeps the config's value.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SCHEDULERS)} (--scheduler)")
    config = {**DEFAULT_SCHEDULE, **(scheduler_config or {})}
    if timestep_spacing is not None:
        config["timestep_spacing"] = timestep_spacing
    if config["prediction_type"] not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {config['prediction_type']!r}")
    if not 1 <= steps <= config["num_train_timesteps"]:
        raise ValueError(f"steps must be in 1..{config['num_train_timesteps']}, got {steps} (--steps)")
    scheduler = SCHEDULERS[name].from_config(config)
    scheduler.set_timesteps(steps)
    return scheduler


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int]) -> Tensor:
    """(N, C, H, W) standard normal noise, row ``i`` drawn from a generator seeded by ``seeds[i]`` alone."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows)  # (N, C, H, W), on CPU so a seed gives the same image on any device


Denoiser = Callable[[Tensor, Tensor, Cond], Tensor]


@torch.no_grad()
def sample(
    denoise: Denoiser,
    cond: Cond,
    *,
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    scheduler: Literal["ddim", "euler"] = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    uncond: Cond | None = None,
    micro_guidance: float | None = None,
    micro_uncond: Cond | None = None,
    batch_size: int = 64,
    scheduler_config: dict | None = None,
    timestep_spacing: str | None = "trailing",
    clamp: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Tensor:
    """Draw ``len(seeds)`` samples, row ``i`` with ``cond[i]`` and seed ``seeds[i]``.

    Args:
        shape: (C, H, W) of one sample.
        guidance: classifier-free guidance scale w: ``u + w (c - u)``; 1 disables guidance.
        uncond: the partner rows for guidance (:func:`uncond_for`); default: null class.
        micro_guidance: a separate scale for the micro-conditions (None: plain guidance); needs
            ``uncond`` (negative content and micro-conditions) and ``micro_uncond`` (the content
            with the negative micro-conditions: ``uncond_for(..., keep_class=True)``).
        batch_size: samples per denoiser call (guidance doubles the rows); results do not
            depend on it.
        clamp: clip the result to [-1, 1] (pixel-space models; turn off for latents).
    Returns:
        (N, C, H, W) float32 on CPU.
    """
    n = len(seeds)
    if len(cond) != n:
        raise ValueError(f"got {len(cond)} condition rows for {n} seeds; give one condition per sample")
    if len(shape) != 3:
        raise ValueError(f"shape must be (C, H, W), got {tuple(shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    micro = micro_guidance is not None
    guided = guidance != 1.0 or micro
    if micro and (uncond is None or micro_uncond is None):
        raise ValueError("micro-condition guidance needs uncond and micro_uncond rows (negative or null micro-conditions)")
    if guided:
        uncond = uncond if uncond is not None else uncond_for(cond)
        for name, rows in (("unconditional", uncond), ("micro-condition partner", micro_uncond if micro else uncond)):
            if len(rows) != n:
                raise ValueError(f"got {len(rows)} {name} rows for {n} samples; give one partner per sample")
    if micro and micro_guidance == guidance:
        # Equal scales telescope to plain guidance against ``uncond`` (microcond.cond.guidance):
        # two model passes per step instead of three, the same result up to rounding.
        micro, micro_guidance = False, None
    blocks = 3 if micro else 2 if guided else 1
    make_scheduler(scheduler, steps, scheduler_config, timestep_spacing)  # validate before any work
    noise = initial_noise(seeds, tuple(shape))  # (N, C, H, W)
    out = []
    bar = tqdm(total=n * steps, desc=f"{scheduler} {steps} steps", unit="img-step", disable=not progress, leave=False)
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        # A fresh scheduler per batch: diffusers schedulers keep a step index as state.
        sched = make_scheduler(scheduler, steps, scheduler_config, timestep_spacing)
        x = noise[rows].to(device) * sched.init_noise_sigma  # (b, C, H, W)
        c = cond[rows].to(device)
        if guided:
            c = c.cat(uncond[rows].to(device))  # (2b rows): row i and row b + i are partners
        if micro:
            c = c.cat(micro_uncond[rows].to(device))  # (3b rows): and row 2b + i
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)  # (b, C, H, W)
            # Integer timesteps: exact for "trailing" and "leading" spacing.
            t_batch = torch.full((len(c),), int(round(float(t))), dtype=torch.int64, device=device)  # (b or 2b,)
            model_out = denoise(torch.cat([x_in] * blocks), t_batch, c)
            if model_out.shape != (len(c), *shape):
                raise ValueError(f"denoiser returned {tuple(model_out.shape)}, expected {(len(c), *shape)}")
            if guided:
                parts = model_out.float().chunk(blocks)  # (b, C, H, W) each: cond, uncond[, micro_uncond]
                model_out = combine_guidance(parts[1], parts[0], guidance, micro_uncond=parts[2] if micro else None,
                                             micro_scale=micro_guidance)
            x = sched.step(model_out.float(), t, x).prev_sample
            bar.update(x.shape[0])
        out.append(x.float().cpu())
    bar.close()
    images = torch.cat(out)  # (N, C, H, W)
    return images.clamp(-1.0, 1.0) if clamp else images


# ------------------------------------------------------------------------------------- sweeps


def original_size_sweep(sizes: Sequence[int], target_size: tuple[int, int]) -> tuple[list[MicroCond], list[str]]:
    """Conditions for the paper's Fig. 3: c_size varied, c_crop = (0, 0), c_ar = target.

    Each size ``s`` is the original's SHORT side; the long side follows the target's aspect
    ratio (for a square target, ``(s, s)``). Returns the conditions and their column labels.
    """
    th, tw = target_size
    conds, labels = [], []
    for s in sizes:
        if int(s) < 1:
            raise ValueError(f"original sizes must be positive pixels, got {s} (--original-size)")
        h, w = (int(s), round(s * tw / th)) if th <= tw else (round(s * th / tw), int(s))
        conds.append(MicroCond((h, w), (0, 0), target_size))
        labels.append(f"c_size {h}x{w}")
    return conds, labels


def crop_sweep(
    crops: Sequence[tuple[int, int]],
    target_size: tuple[int, int],
    original_size: tuple[int, int] | None = None,
) -> tuple[list[MicroCond], list[str]]:
    """Conditions for the paper's Fig. 4: c_crop varied, c_size fixed (default: the target).

    Crops outside the resized original are allowed on purpose (no training image had them);
    their labels are marked with ``*``.
    """
    original_size = original_size or target_size
    rh, rw = resized_size(original_size, target_size)
    conds, labels = [], []
    for top, left in crops:
        micro = MicroCond(original_size, (top, left), target_size)
        outside = top + target_size[0] > rh or left + target_size[1] > rw
        conds.append(micro)
        labels.append(f"c_crop {top},{left}" + ("*" if outside else ""))
    return conds, labels


def sweep(
    denoise: Denoiser,
    values: Sequence[MicroCond],
    seeds: Sequence[int],
    *,
    labels: int | Sequence[int] = NULL_LABEL,
    shape: tuple[int, int, int],
    guidance: float = 1.0,
    negative: MicroCond | None = None,
    null_micro: bool = False,
    micro_guidance: float | None = None,
    **sample_kwargs,
) -> Tensor:
    """Sample every (seed, condition) pair: (S, V, C, H, W), seeds fixed across a row.

    ``labels`` is one class for all rows or one per seed. Guidance partners follow
    :func:`uncond_for` with ``negative`` / ``null_micro``; ``micro_guidance`` without either
    guides away from the null micro-condition. Pass the result, flattened, to
    :func:`microcond.sample.grid.save_grid` with ``nrow=len(values)``.
    """
    if not values or not seeds:
        raise ValueError(f"a sweep needs at least one value and one seed, got {len(values)} values, {len(seeds)} seeds")
    row_labels = _broadcast(labels if isinstance(labels, int) else list(labels), len(seeds), "class labels")
    micro = [v for _ in seeds for v in values]  # row-major: seed s, then every value
    cond = make_cond(micro, [lab for lab in row_labels for _ in values])
    partners = guidance_partners(cond, guidance, negative, null_micro, micro_guidance)
    all_seeds = [s for s in seeds for _ in values]
    images = sample(denoise, cond, shape=shape, seeds=all_seeds, guidance=guidance, **partners, **sample_kwargs)
    return images.reshape(len(seeds), len(values), *shape)  # (S, V, C, H, W)
