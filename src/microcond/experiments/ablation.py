"""The recipe ablation (``microcond experiment crop-ablation``): the recipe variants behind the
pixel presets' defaults, each trained as the paper's size-crop model (seed 0) and measured for
both effects, fidelity, recognisability and live conditioning units into ``ablation.json``,
which the paper's page shows as its last section. Sampling variants measure a trained setting
under class and micro-condition guidance.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from microcond.experiments.launch import ensure_demo_data, prepare_caches, train_runs
from microcond.experiments.paper import N_CLASSES, Budget, _save, held_out_references, table_scores, train_command
from microcond.metrics.cropeffect import TRAIN_SIZE, model_effect, real_effect

# Recipes of the ablation, every field that sets the objective or the conditioning path spelled
# out (the presets' defaults change): class vectors at 0.02 and the tiny UNet's own 128-wide
# conditioning MLP (time_embed_dim 0) unless a row says otherwise.
BASE = dict(class_vector_std=0.02, time_embed_dim=0)
DDPM_V = dict(prediction_type="v_prediction", timestep_sampling="uniform", loss_weighting="none", **BASE)
EDM = dict(prediction_type="v_prediction", timestep_sampling="lognormal", loss_weighting="edm", lognormal_mean=-1.2, lognormal_std=1.2, uniform_timestep_share=0.0, **BASE)

# The recipe ablation (docs/results.md): (what changes, data mix, train overrides). Everything else
# is the tiny preset with size + crop (+ target) conditioning, as the size-crop model.
ABLATIONS = {
    "edm": ("EDM: v-prediction, log sigma ~ N(-1.2, 1.2^2), weight SNR + 1/0.5^2", "wide", EDM),
    "edm-broad": ("EDM with broader noise levels, log sigma ~ N(-0.4, 1.6^2)", "wide", {**EDM, "lognormal_mean": -0.4, "lognormal_std": 1.6}),
    "edm-center": ("EDM, micro features centred on the default query", "wide", {**EDM, "center_micro_features": True}),
    "v-wide-center": ("v-prediction (weight SNR + 1), uniform timesteps, centred", "wide", {**DDPM_V, "center_micro_features": True}),
    "mix-center": ("EDM with half the timesteps uniform, centred", "wide", {**EDM, "uniform_timestep_share": 0.5, "center_micro_features": True}),
    "mix-center-e12": ("as mix-center, 12 emoji per class", "wide-e12", {**EDM, "uniform_timestep_share": 0.5, "center_micro_features": True}),
    "v-sd2-center": ("v-prediction, uniform timesteps, weight SNR + 1/2^2, centred", "wide", {**DDPM_V, "loss_weighting": "edm", "sigma_data": 2.0, "center_micro_features": True}),
    "v-sd4-center": ("v-prediction, uniform timesteps, weight SNR + 1/4^2, centred", "wide",
                     {**DDPM_V, "loss_weighting": "edm", "sigma_data": 4.0, "center_micro_features": True}),
    "v-sd8-center": ("v-prediction, uniform timesteps, weight SNR + 1/8^2, centred", "wide", {**DDPM_V, "loss_weighting": "edm", "sigma_data": 8.0, "center_micro_features": True}),
    "v-sd4-center-zero": ("as v-sd4-center, conditioning output layer zero-initialised, no weight decay on it", "wide",
                          {**DDPM_V, "loss_weighting": "edm", "sigma_data": 4.0, "center_micro_features": True, "zero_init_conditioning": True}),
    "v-sd4-center-2x": ("as v-sd4-center, twice the training images", "wide",
                        {**DDPM_V, "loss_weighting": "edm", "sigma_data": 4.0, "center_micro_features": True, "steps": 4000}),
    "v-sd4-center-lr2": ("as v-sd4-center, learning rate 2e-3", "wide",
                         {**DDPM_V, "loss_weighting": "edm", "sigma_data": 4.0, "center_micro_features": True, "lr": 2e-3}),
    "v-sd4-center-cls1": ("as v-sd4-center, class vectors initialised at scale 1 (as the micro features beside them)", "wide",
                          {**DDPM_V, "loss_weighting": "edm", "sigma_data": 4.0, "center_micro_features": True, "class_vector_std": 1.0}),
    "v-sd4-center-cls1-w256": ("as v-sd4-center-cls1, timestep embedding and conditioning MLP 256 wide (128 before): the pixel presets' recipe", "wide",
                               {**DDPM_V, "loss_weighting": "edm", "sigma_data": 4.0, "center_micro_features": True, "class_vector_std": 1.0,
                                "time_embed_dim": 256}),
}

# Sampling variants of trained settings: row -> (ABLATIONS setting, class guidance scale, micro-condition guidance scale or None).
GUIDED = {"edm-cfg2": ("edm", 2.0, None), "v-sd4-center-cfg3": ("v-sd4-center", 3.0, None), "v-sd4-center-cls1-cfg4": ("v-sd4-center-cls1", 4.0, None),
          "v-sd4-center-cls1-cfg4-mg4": ("v-sd4-center-cls1", 4.0, 4.0), "v-sd4-center-cls1-w256-cfg4": ("v-sd4-center-cls1-w256", 4.0, None),
          "v-sd4-center-cfg3-mg4": ("v-sd4-center", 3.0, 4.0), "v-sd4-center-cls1-w256-cfg4-mg4": ("v-sd4-center-cls1-w256", 4.0, 4.0)}


def size_response(model, n: int, steps: int, sizes: tuple[int, int] = (8, 128), guidance: float = 1.0, micro_guidance: float | None = None) -> dict[str, float]:
    """Mean Laplacian variance of samples asked for a small and a large square original (Fig. 3's ends)."""
    from microcond.metrics.evaluate import laplacian_variance
    from microcond.sample.run import Query

    seeds, labels = list(range(20_000, 20_000 + n)), [i % N_CLASSES for i in range(n)]
    return {str(s): float(laplacian_variance(model.draw(Query(original_size=(s, s), guidance=guidance, micro_guidance=micro_guidance), seeds, labels, steps=steps, progress=False)).mean())
            for s in sizes}


def live_units(run: Path, batches: int = 16) -> int:
    """Live hidden units of a run's conditioning MLP (EMA weights) over training batches
    (:class:`microcond.model.ConditioningHealth`'s measure, after training)."""
    import torch

    from microcond.data.loader import open_training_data
    from microcond.model import ConditioningHealth
    from microcond.sample.run import load_run

    model, cfg, _, _ = load_run(run)
    health = ConditioningHealth(model, rows=batches * 64, training_only=False)  # the model is in eval mode
    data = iter(open_training_data(cfg, run, rank=0, world_size=1, batch_size=64))
    with torch.no_grad():
        for _ in range(batches):
            batch = next(data)
            x = torch.zeros(len(batch["ids"]), 3, cfg.resolution, cfg.resolution)
            model(x, torch.full((len(x),), 500), model.embedder.select(batch["ids"]), None, batch["labels"])
    return health.live(model.state_dict())


def variant_label(setting: str, guidance: float, micro: float | None) -> str:
    """An ablation row's label: the setting, and the guidance it was sampled with."""
    sampled = ([f"class guidance {guidance:g}"] if guidance != 1 else []) + ([f"micro-condition guidance {micro:g}"] if micro is not None else [])
    return setting + (f"; {' and '.join(sampled)} at sampling" if sampled else "")


def run_ablation(out: Path, budget: Budget = Budget(steps=2000, crop_samples=128), parallel: int = 2, settings: list[str] | None = None) -> dict:
    """Train ABLATIONS settings (all, or the named ones; seed 0), measure each (and each of its
    GUIDED sampling variants) into ``out/ablation.json``, which keeps earlier settings' rows.

    A row holds the crop effect (cut-off per query, object slope), the Fig. 3 ratio, Table 2's
    fidelity and class accuracy on ``2 * crop_samples`` samples, live conditioning units (EMA) and
    images seen.
    """
    from microcond.demodata.build import PALETTE
    from microcond.metrics.evaluate import load_references
    from microcond.sample.run import Run

    unknown = sorted(set(settings or []) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablation setting(s) {unknown}; choose from {sorted(ABLATIONS)} (--settings)")
    chosen = {name: ABLATIONS[name] for name in (settings or ABLATIONS)}
    out.mkdir(parents=True, exist_ok=True)
    mixes = sorted({mix for _, mix, _ in chosen.values()})
    data = {mix: ensure_demo_data(out / f"data-{mix}", mix) for mix in mixes}
    for folder in data.values():
        prepare_caches(folder / "train", {0})
    runs = {name: out / name for name in chosen}
    # A row may train longer than the budget ("steps" among its overrides).
    steps = {name: extra.get("steps", budget.steps) for name, (_, _, extra) in chosen.items()}
    commands = {name: train_command("size-crop", data[mix] / "train", runs[name], steps[name], 0, {k: v for k, v in extra.items() if k != "steps"})
                for name, (_, mix, extra) in chosen.items()}
    train_runs(commands, runs, steps, parallel)
    path = out / "ablation.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    spent = {k: v for k, v in asdict(budget).items() if k not in ("guidance", "micro_guidance")}  # each row names its own guidance
    if results.get("budget") != spent:
        results = {"budget": spent, "real": {}, "rows": {}}
    for row_name, row in results["rows"].items():  # labels follow the definitions (numbers never change here)
        if (base := GUIDED.get(row_name, (row_name,))[0]) in ABLATIONS:
            row["setting"] = variant_label(ABLATIONS[base][0], row.get("guidance", 1.0), row.get("micro_guidance"))
    for mix in mixes:
        results["real"].setdefault(mix, real_effect(data[mix] / "train", PALETTE))
    _save(results, path)  # the refreshed labels too, when no row is left to measure
    references = {}
    variants = [(name, name, 1.0, None) for name in chosen] + [(row, base, scale, micro) for row, (base, scale, micro) in GUIDED.items() if base in chosen]
    for row, name, guidance, micro in variants:
        if row in results["rows"]:
            continue
        setting, mix, extra = chosen[name]
        if mix not in references:
            references[mix] = (load_references(data[mix] / "eval", (TRAIN_SIZE, TRAIN_SIZE)), held_out_references(data[mix]))
        model = Run(runs[name])
        table, _ = table_scores(model, *references[mix], 2 * budget.crop_samples, budget, guidance=guidance, micro_guidance=micro)
        results["rows"][row] = {"setting": variant_label(setting, guidance, micro), "aspect_mix": mix,
                                "overrides": extra, "guidance": guidance, "micro_guidance": micro, "step": model.step,
                                "images_seen": model.step * model.cfg.batch_size,
                                "cond_units_live": live_units(runs[name]), "table": table,
                                **model_effect(model, budget.crop_samples, PALETTE, steps=budget.sampler_steps, n_classes=N_CLASSES, guidance=guidance,
                                               micro_guidance=micro),
                                "sharpness": size_response(model, budget.crop_samples, budget.sampler_steps, guidance=guidance, micro_guidance=micro)}
        _save(results, path)
    return results
