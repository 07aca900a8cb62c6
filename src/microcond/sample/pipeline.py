"""``MicroCondXLPipeline``: diffusers' SDXL text-to-image pipeline with exact micro-conditions.

diffusers' ``StableDiffusionXLPipeline`` (checked against 0.42) mishandles SDXL's
micro-conditions in four ways; this subclass keeps its components, loading and call signature
and fixes each:

1. Pairing. It stacks the ids as ``[negative, positive]`` and repeats that pair per image, so
   with two or more images the rows read ``[neg, pos, neg, pos]`` while the latents are
   ``[uncond_0, uncond_1, cond_0, cond_1]``: image 0's conditional row gets the negative ids.
   Here every branch is a block of per-image rows in the latents' order.
2. Partial negatives. ``negative_original_size`` and ``negative_crops_coords_top_left`` are
   ignored unless ``negative_target_size`` is also given. Here each negative field counts alone
   and a missing one is the positive field.
3. Precision. The ids are made in the model's dtype before the Fourier embedding (bf16 rounds
   1023 to 1024). Here they stay float32 and are embedded by :class:`MicroCondEmbedder`.
4. The null condition. sgm's conditioning dropout trains a ZERO embedding as "no
   micro-condition", which no id can produce (``|F(x)|^2 = dim / 2`` for every x). Here
   ``negative_micro_condition="null"`` gives the unconditional rows that zero embedding.

It adds micro-condition guidance (:func:`microcond.cond.guidance.combine_guidance`), off by default.

How the embedding reaches the UNet: ``UNet2DConditionModel`` embeds ``time_ids`` in its
``add_time_proj`` module and concatenates the result with the pooled text. For each UNet call
a forward hook replaces that module's output with :class:`MicroCondEmbedder`'s embedding of the
same float32 ids, with the null rows zeroed. The UNet's class, parameters and the rest of its
forward pass stay diffusers' own, so any SDXL folder loads as it is (a ``microcond export
--pipeline`` or a stock checkpoint). Float32 ids alone would fix the precision, but no ids give
the null embedding; :class:`microcond.model.MicroCondUNet` takes the features directly, but
would have to replace the loaded UNet's class.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg, retrieve_timesteps
from diffusers.utils.torch_utils import get_module_execution_device

from microcond.cond.embedder import MicroCond, MicroCondEmbedder, time_ids
from microcond.cond.guidance import combine_guidance
from microcond.model import check_embedder_matches

__all__ = ["MicroCondXLPipeline", "micro_conditions"]

Pair = tuple[int, int]
# UNet rows of each guidance branch: (prompt, micro-conditions), each "positive" or "negative".
BRANCHES = {"uncond": ("negative", "negative"), "micro_uncond": ("positive", "negative"), "cond": ("positive", "positive")}


def _per_image(value: Pair | Sequence[Pair] | None, field: str, batch_size: int, per_prompt: int) -> list[Pair | None]:
    """One pair for every image (prompt-major, as ``encode_prompt`` orders them) from one pair or one per prompt."""
    if value is None or not isinstance(value[0], (tuple, list)):
        pairs = [value] * batch_size
    else:
        pairs = list(value)
        if len(pairs) != batch_size:
            raise ValueError(f"{field} must be one pair or one pair per prompt ({batch_size}), got {len(pairs)} pairs")
    return [pair for pair in pairs for _ in range(per_prompt)]


def _or(value: Pair | None, default: Pair) -> Pair:
    return default if value is None else value


def micro_conditions(
    size: Pair,
    original_size: Pair | Sequence[Pair] | None = None,
    crops_coords_top_left: Pair | Sequence[Pair] = (0, 0),
    target_size: Pair | Sequence[Pair] | None = None,
    negative_original_size: Pair | Sequence[Pair] | None = None,
    negative_crops_coords_top_left: Pair | Sequence[Pair] | None = None,
    negative_target_size: Pair | Sequence[Pair] | None = None,
    batch_size: int = 1,
    num_images_per_prompt: int = 1,
) -> tuple[list[MicroCond], list[MicroCond] | None]:
    """Each image's micro-conditions and its negative ones, from the pipeline's arguments.

    Every argument is one ``(a, b)`` pair for all images or a list with one pair per prompt.
    ``original_size`` and ``target_size`` default to ``size``, the output ``(height, width)``.
    Each negative field left ``None`` is the positive field; the negatives are ``None`` when no
    negative field is given (the unconditional rows then use the positive micro-conditions).
    """
    def each(field: str, value: Pair | Sequence[Pair] | None) -> list[Pair | None]:
        return _per_image(value, field, batch_size, num_images_per_prompt)

    positive = [MicroCond(_or(original, size), crop, _or(target, size)) for original, crop, target in zip(
        each("original_size", original_size), each("crops_coords_top_left", crops_coords_top_left), each("target_size", target_size))]
    if negative_original_size is None and negative_crops_coords_top_left is None and negative_target_size is None:
        return positive, None
    negatives = zip(each("negative_original_size", negative_original_size),
                    each("negative_crops_coords_top_left", negative_crops_coords_top_left),
                    each("negative_target_size", negative_target_size))
    try:
        negative = [MicroCond(_or(original, p.original_size), _or(crop, p.crop_top_left), _or(target, p.target_size))
                    for p, (original, crop, target) in zip(positive, negatives)]
    except ValueError as err:
        raise ValueError(f"negative micro-conditions: {err}") from None
    return positive, negative


@contextmanager
def _embeds_time_ids_with(unet: UNet2DConditionModel, embedder: MicroCondEmbedder, drop: torch.Tensor) -> Iterator[None]:
    """Within the block ``unet`` embeds its ``time_ids`` with ``embedder``: float32, ``drop``-ped signals zero.

    ``drop`` is (B, n_signals) for the B rows of the UNet call made inside the block.
    """

    def embed(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        ids = args[0].reshape(drop.shape[0], embedder.n_ids)  # (B, 6) float32, exact integers
        return embedder(ids, drop).reshape(output.shape)  # (B * 6, dim) float32

    handle = unet.add_time_proj.register_forward_hook(embed)
    try:
        yield
    finally:
        handle.remove()


class MicroCondXLPipeline(StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` with per-image, exact micro-conditions, the null condition
    and micro-condition guidance (see the module docstring for what differs and why).

    Load it like the parent: ``MicroCondXLPipeline.from_pretrained(folder, torch_dtype=...)``.
    With one image, float32 weights, every negative field given (or none) and no micro-condition
    guidance it computes what the parent computes.
    """

    def _embedder(self, pooled_dim: int, device: torch.device) -> MicroCondEmbedder:
        """SDXL's six-id embedder, checked against this UNet's ``text_time`` embedding."""
        embedder = MicroCondEmbedder(dim=self.unet.config.addition_time_embed_dim)
        check_embedder_matches(self.unet, embedder, pooled_dim)
        return embedder.to(device)

    def _decode(self, latents: torch.Tensor, output_type: str) -> Any:
        """Latents to images as the parent decodes them (fp16 VAEs upcast, latents_mean/std, watermark)."""
        upcast = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if upcast:
            self.vae.to(torch.float32)
        config = self.vae.config
        latents = latents.to(get_module_execution_device(self.vae), self.vae.dtype)
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            mean = torch.tensor(config.latents_mean).view(1, 4, 1, 1).to(latents)
            std = torch.tensor(config.latents_std).view(1, 4, 1, 1).to(latents)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        image = self.vae.decode(latents, return_dict=False)[0]
        if upcast:
            self.vae.to(torch.float16)
        if self.watermark is not None:
            image = self.watermark.apply_watermark(image)
        return self.image_processor.postprocess(image, output_type=output_type)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image: Any | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: Pair | Sequence[Pair] | None = None,
        crops_coords_top_left: Pair | Sequence[Pair] = (0, 0),
        target_size: Pair | Sequence[Pair] | None = None,
        negative_original_size: Pair | Sequence[Pair] | None = None,
        negative_crops_coords_top_left: Pair | Sequence[Pair] | None = None,
        negative_target_size: Pair | Sequence[Pair] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        negative_micro_condition: str | None = None,
        micro_condition_guidance_scale: float | None = None,
        **kwargs: Any,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        """Generate images; the arguments are the parent's, with these differences.

        Args:
            original_size, crops_coords_top_left, target_size: one ``(a, b)`` pair for all
                images, or a list with one pair per prompt. Sizes are (height, width), crops
                (top, left); sizes default to the output size.
            negative_original_size, negative_crops_coords_top_left, negative_target_size: the
                unconditional rows' micro-conditions, each on its own; a field left ``None`` is
                the positive one (the parent's default crop is ``(0, 0)`` and it ignores these
                unless both sizes are given).
            negative_micro_condition: ``"null"`` gives the unconditional rows the zero
                micro-condition embedding (sgm's dropped condition) instead of any ids.
            micro_condition_guidance_scale: ``None`` (default) is plain guidance. A number runs
                a third branch, the prompt with the negative micro-conditions, and guides the
                micro-conditions with this scale apart from the prompt's ``guidance_scale``
                (:func:`microcond.cond.guidance.combine_guidance`); it needs negative or null
                micro-conditions to guide away from.
            callback_on_step_end: tensors are stacked by branch, ``[uncond, micro_uncond, cond]``
                (the branches in use), each one row per image. A callback that sets guidance off
                and keeps the last rows, as ``SDXLCFGCutoffCallback`` does, ends guidance there.
        """
        if kwargs:
            raise ValueError(f"MicroCondXLPipeline takes no {sorted(kwargs)}; for per-step callbacks use callback_on_step_end")
        if negative_micro_condition not in (None, "null"):
            raise ValueError(f"negative_micro_condition must be None or 'null', got {negative_micro_condition!r}")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        self.check_inputs(prompt, prompt_2, height, width, None, negative_prompt, negative_prompt_2, prompt_embeds,
                          negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, ip_adapter_image,
                          ip_adapter_image_embeds, callback_on_step_end_tensor_inputs)
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._denoising_end = denoising_end
        self._interrupt = False

        batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
        n = batch_size * num_images_per_prompt
        positive, negative = micro_conditions(
            (height, width), original_size, crops_coords_top_left, target_size, negative_original_size,
            negative_crops_coords_top_left, negative_target_size, batch_size, num_images_per_prompt)
        null = negative_micro_condition == "null"
        if null and negative is not None:
            raise ValueError("give either negative_micro_condition='null' or negative micro-condition sizes/crops, not both")
        if micro_condition_guidance_scale is not None and negative is None and not null:
            raise ValueError("micro_condition_guidance_scale needs micro-conditions to guide away from: pass negative_original_size, "
                             "negative_crops_coords_top_left or negative_target_size, or negative_micro_condition='null'")

        device = self._execution_device
        guided = self.do_classifier_free_guidance
        lora_scale = cross_attention_kwargs.get("scale") if cross_attention_kwargs is not None else None
        prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = self.encode_prompt(
            prompt=prompt, prompt_2=prompt_2, device=device, num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=guided, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, lora_scale=lora_scale, clip_skip=clip_skip)
        embedder = self._embedder(pooled_prompt_embeds.shape[-1], device)
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        latents = self.prepare_latents(n, self.unet.config.in_channels, height, width, prompt_embeds.dtype, device, generator, latents)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # The UNet batch: one block of n rows per branch, row i of each block is image i.
        branches = {name: rows for name, rows in BRANCHES.items()
                    if (name != "uncond" or guided) and (name != "micro_uncond" or micro_condition_guidance_scale is not None)}
        text = {"positive": prompt_embeds, "negative": negative_prompt_embeds}
        pooled = {"positive": pooled_prompt_embeds, "negative": negative_pooled_prompt_embeds}
        ids = {"positive": time_ids(positive), "negative": time_ids(negative or positive)}  # (n, 6) int64
        no_drop = torch.zeros(n, len(embedder.signal_names), dtype=torch.bool)
        drop = {"positive": no_drop, "negative": embedder.null_drop(n).cpu() if null else no_drop}  # (n, 3)
        prompt_embeds = torch.cat([text[t] for t, _ in branches.values()]).to(device)  # (branches * n, L, D)
        add_text_embeds = torch.cat([pooled[t] for t, _ in branches.values()]).to(device)  # (branches * n, P)
        add_time_ids = torch.cat([ids[m] for _, m in branches.values()]).to(device, torch.float32)  # (branches * n, 6)
        micro_drop = torch.cat([drop[m] for _, m in branches.values()]).to(device)  # (branches * n, 3)
        image_embeds = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            image_embeds = self.prepare_ip_adapter_image_embeds(ip_adapter_image, ip_adapter_image_embeds, device, n, guided)
            halves = [dict(zip(("negative", "positive"), e.chunk(2))) if guided else {"positive": e} for e in image_embeds]
            image_embeds = [torch.cat([half[t] for t, _ in branches.values()]) for half in halves]

        if denoising_end is not None and 0 < denoising_end < 1:
            train_steps = self.scheduler.config.num_train_timesteps
            cutoff = int(round(train_steps - denoising_end * train_steps))  # the parent's arithmetic
            num_inference_steps = len([t for t in timesteps if t >= cutoff])
            timesteps = timesteps[:num_inference_steps]
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:  # guidance-distilled UNets embed the scale
            scale = torch.tensor(guidance_scale - 1).repeat(n)
            timestep_cond = self.get_guidance_scale_embedding(scale, embedding_dim=self.unet.config.time_cond_proj_dim)
            timestep_cond = timestep_cond.repeat(len(branches), 1).to(device, latents.dtype)

        self._num_timesteps = len(timesteps)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        num_warmup_steps = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                if guided and not self.do_classifier_free_guidance:
                    # A callback turned guidance off (diffusers' SDXLCFGCutoffCallback): it kept the
                    # last rows of each tensor, the conditional block.
                    guided, branches, micro_drop = False, {"cond": BRANCHES["cond"]}, micro_drop[-n:]
                    image_embeds = [e[-n:] for e in image_embeds] if image_embeds is not None else None
                model_input = self.scheduler.scale_model_input(torch.cat([latents] * len(branches)), t)
                added_cond_kwargs = {"text_embeds": add_text_embeds, "time_ids": add_time_ids}
                if image_embeds is not None:
                    added_cond_kwargs["image_embeds"] = image_embeds
                with _embeds_time_ids_with(self.unet, embedder, micro_drop):
                    noise_pred = self.unet(model_input, t, encoder_hidden_states=prompt_embeds, timestep_cond=timestep_cond,
                                           cross_attention_kwargs=cross_attention_kwargs, added_cond_kwargs=added_cond_kwargs,
                                           return_dict=False)[0]
                pred = dict(zip(branches, noise_pred.chunk(len(branches))))  # each (n, C, h, w)
                noise_pred = pred["cond"]
                if len(branches) > 1:
                    noise_pred = combine_guidance(pred.get("uncond", pred.get("micro_uncond")), pred["cond"],
                                                  self.guidance_scale if guided else 1.0, micro_uncond=pred.get("micro_uncond"),
                                                  micro_scale=micro_condition_guidance_scale)
                if guided and self.guidance_rescale > 0.0:
                    noise_pred = rescale_noise_cfg(noise_pred, pred["cond"], guidance_rescale=self.guidance_rescale)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    state = {"latents": latents, "prompt_embeds": prompt_embeds, "add_text_embeds": add_text_embeds,
                             "add_time_ids": add_time_ids}
                    outputs = callback_on_step_end(self, i, t, {k: state[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    add_text_embeds = outputs.pop("add_text_embeds", add_text_embeds)
                    add_time_ids = outputs.pop("add_time_ids", add_time_ids)
                if i == len(timesteps) - 1 or (i + 1 > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        image = latents if output_type == "latent" else self._decode(latents, output_type)
        self.maybe_free_model_hooks()
        return StableDiffusionXLPipelineOutput(images=image) if return_dict else (image,)
