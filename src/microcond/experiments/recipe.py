"""A paper run's recipe and sampling in words: the training fields that make the pixel presets'
recipe, what changed since a run was trained, and the guidance its samples were drawn with."""

from __future__ import annotations

RECIPE_FIELDS = ("prediction_type", "timestep_sampling", "lognormal_mean", "lognormal_std", "loss_weighting", "sigma_data", "min_snr_gamma",
                 "zero_init_conditioning", "lr", "ema_decay", "cond_dropout", "class_dropout", "class_vector_std", "time_embed_dim")


def sampled_with(budget: dict) -> str:
    """The guidance every measured sample was drawn with, in words (a budget of an older run has none)."""
    guidance, micro = budget.get("guidance", 1.0), budget.get("micro_guidance", 0.0)
    if guidance == 1 and not micro:
        return "no guidance"
    return (f"class guidance {guidance:g}" + (f" and micro-condition guidance {micro:g} for the models that see micro-conditions" if micro else "")
            + (" (equal scales: guidance against the null class and null micro-conditions together)" if micro == guidance else ""))


def recipe_changes(recipe: dict) -> dict[str, tuple]:
    """Fields of RECIPE_FIELDS whose value in ``recipe`` (a run's, as recorded; a field it lacks
    had its default then) differs from the tiny preset's now: field -> (then, now)."""
    from dataclasses import fields

    from microcond.train.config import TrainConfig, resolve

    now, default = resolve("tiny"), {f.name: f.default for f in fields(TrainConfig)}
    then = {k: recipe.get(k, default[k]) for k in RECIPE_FIELDS}
    return {k: (then[k], getattr(now, k)) for k in RECIPE_FIELDS if then[k] != getattr(now, k)} if recipe else {}


def describe_recipe(recipe: dict) -> str:
    """The objective of a run config in words (the fields of :data:`RECIPE_FIELDS`)."""
    if not recipe:
        return "the pixel presets' defaults"
    target = {"epsilon": "epsilon prediction", "v_prediction": "v-prediction"}[recipe["prediction_type"]]
    levels = (f"log sigma ~ N({recipe['lognormal_mean']:g}, {recipe['lognormal_std']:g}^2) noise levels (EDM)" if recipe["timestep_sampling"] == "lognormal"
              else "uniform timesteps of the 1000-step DDPM schedule")
    weight = {"none": f"{target}'s own loss weight", "edm": f"EDM's loss weight (SNR + 1/{recipe['sigma_data']:g}^2 on the clean-image error)",
              "min_snr": f"min-SNR-{recipe['min_snr_gamma']:g} weighting"}[recipe["loss_weighting"]]
    zero = ", conditioning output layer zero-initialised" if recipe.get("zero_init_conditioning") else ""
    width = recipe.get("time_embed_dim", 0)
    path = (f", class vectors initialised at scale {recipe.get('class_vector_std', 0.02):g}, "
            f"conditioning MLP {f'{width} wide' if width else 'as wide as the timestep embedding (128)'}")
    return (f"{target}, {levels}, {weight}{zero}{path}, lr {recipe['lr']:g}, EMA {recipe['ema_decay']:g}, "
            f"micro-condition dropout {recipe['cond_dropout']:g} and class dropout {recipe['class_dropout']:g}")
