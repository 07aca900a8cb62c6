"""The denoiser: diffusers ``UNet2DConditionModel`` fed by our micro-condition embedding.

SDXL adds ``add_embedding(concat(pooled_text, F(ids)))`` to the timestep embedding
(``addition_embed_type="text_time"``). diffusers computes F(ids) itself and so cannot express
sgm's dropped (zero) condition (diffusers issue #4208). :class:`MicroCondUNet` keeps every
parameter name of ``UNet2DConditionModel`` (an SDXL checkpoint loads unchanged) and also
accepts the features precomputed by :class:`~microcond.cond.embedder.MicroCondEmbedder`.
"""

from __future__ import annotations

from typing import Protocol

import torch
from diffusers import UNet2DConditionModel

from microcond.cond.embedder import MicroCondEmbedder


class ModelSettings(Protocol):
    """The fields of a training config (:class:`microcond.train.config.TrainConfig`) that say
    which denoiser to build and how its parameters train; the model stage does not import the
    training stage above it."""

    preset: str
    resolution: int
    pretrained: str
    signals: tuple[str, ...]
    cond_dropout: float
    num_classes: int
    text_encoders: str
    class_dropout: float
    class_vector_std: float
    time_embed_dim: int
    caption_dropout: float
    zero_init_conditioning: bool
    lora_rank: int
    lora_alpha: float
    lora_add_embedding: bool
    center_micro_features: bool
    gradient_checkpointing: bool
    lr: float
    add_embedding_lr: float
    weight_decay: float


class MicroCondUNet(UNet2DConditionModel):
    """``UNet2DConditionModel`` whose ``text_time`` branch also takes ``micro_embeds``.

    Call it as diffusers does, with ``added_cond_kwargs={"text_embeds": pooled, "micro_embeds":
    embedder(ids, drop)}``; with ``"time_ids"`` instead of ``"micro_embeds"`` it behaves exactly
    like the parent class.
    """

    def get_aug_embed(self, emb: torch.Tensor, encoder_hidden_states: torch.Tensor, added_cond_kwargs: dict):
        if self.config.addition_embed_type != "text_time" or "micro_embeds" not in added_cond_kwargs:
            return super().get_aug_embed(emb, encoder_hidden_states, added_cond_kwargs)
        text_embeds = added_cond_kwargs["text_embeds"]  # (B, pooled_dim)
        micro_embeds = added_cond_kwargs["micro_embeds"]  # (B, n_ids * 256)
        expected = self.add_embedding.linear_1.in_features - text_embeds.shape[-1]
        if micro_embeds.shape[-1] != expected:
            raise ValueError(
                f"micro_embeds has width {micro_embeds.shape[-1]} but this UNet's add_embedding takes "
                f"{expected} after {text_embeds.shape[-1]} pooled-text features"
            )
        add_embeds = torch.cat([text_embeds, micro_embeds], dim=-1)  # (B, in_features)
        return self.add_embedding(add_embeds.to(emb.dtype))


def check_embedder_matches(unet: UNet2DConditionModel, embedder: MicroCondEmbedder, pooled_dim: int) -> None:
    """Raise ``ValueError`` unless ``embedder`` produces exactly what ``unet`` was built to consume."""
    cfg = unet.config
    if cfg.addition_embed_type != "text_time":
        raise ValueError(f"the UNet needs addition_embed_type='text_time' for micro-conditioning, got {cfg.addition_embed_type!r}")
    if cfg.addition_time_embed_dim != embedder.dim:
        raise ValueError(f"UNet addition_time_embed_dim is {cfg.addition_time_embed_dim}, the embedder uses dim={embedder.dim}")
    if not cfg.flip_sin_to_cos or cfg.freq_shift != 0:
        raise ValueError(
            "SDXL's Fourier features are cos-first with no frequency shift; this UNet has "
            f"flip_sin_to_cos={cfg.flip_sin_to_cos}, freq_shift={cfg.freq_shift}"
        )
    width = unet.add_embedding.linear_1.in_features
    if width != pooled_dim + embedder.out_dim:
        raise ValueError(
            f"the UNet's add_embedding takes {width} features; {pooled_dim} pooled + {embedder.n_ids} ids x "
            f"{embedder.dim} ({', '.join(embedder.signal_names)}) = {pooled_dim + embedder.out_dim}. "
            "Match the conditions to the checkpoint (SDXL base: 6 ids, refiner: 5)."
        )


# Presets: (block_out_channels, layers_per_block, attention) for pixel-space models; the tiny one
# is the 1.0 M-parameter UNet measured in reference/cpu-measurements.md.
PIXEL_PRESETS = {
    "tiny": ((32, 64, 64), 1, False),
    "small": ((64, 128, 128), 1, False),
}
POOLED_DIM = 64  # width of the pooled slot (class vector) for pixel-space presets; SDXL: 1280


def build_unet(preset: str, resolution: int, embedder: MicroCondEmbedder, pretrained: str = "", weights: bool = True,
               time_embed_dim: int = 0) -> MicroCondUNet:
    """A ``text_time`` UNet for a preset; ``sdxl`` loads one from a local folder (never downloads),
    or only its architecture with ``weights=False`` (build it under ``torch.device("meta")`` to
    count and plan without memory)."""
    if preset == "sdxl":
        from pathlib import Path

        folder = Path(pretrained)
        if (folder / "unet" / "config.json").exists():
            folder = folder / "unet"
        if not (folder / "config.json").exists():
            raise ValueError(f"--pretrained {pretrained!r} holds no UNet (expected config.json there or in unet/)")
        if weights:
            unet = MicroCondUNet.from_pretrained(folder, local_files_only=True, use_safetensors=True)  # never unpickle a .bin
        else:
            unet = MicroCondUNet.from_config(MicroCondUNet.load_config(folder))
        pooled = unet.add_embedding.linear_1.in_features - unet.config.addition_time_embed_dim * embedder.n_ids
        check_embedder_matches(unet, embedder, pooled)
        return unet
    if preset not in PIXEL_PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PIXEL_PRESETS) + ['sdxl']}")
    channels, layers, attention = PIXEL_PRESETS[preset]
    down = ("CrossAttnDownBlock2D" if attention else "DownBlock2D",) + ("DownBlock2D",) * (len(channels) - 1)
    up = ("UpBlock2D",) * (len(channels) - 1) + ("CrossAttnUpBlock2D" if attention else "UpBlock2D",)
    return MicroCondUNet(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=layers,
        # diffusers' default mid block has cross-attention; "UNetMidBlock2D" here has none.
        mid_block_type="UNetMidBlock2DCrossAttn" if attention else "UNetMidBlock2D",
        norm_num_groups=32,
        cross_attention_dim=POOLED_DIM,
        addition_embed_type="text_time",
        addition_time_embed_dim=embedder.dim,
        projection_class_embeddings_input_dim=POOLED_DIM + max(embedder.out_dim, 0),
        time_embedding_dim=time_embed_dim or None,  # None: 4 x the first block's channels
    )


class Denoiser(torch.nn.Module):
    """UNet + micro-condition embedder + class vectors: ``(x, t, ids, drop, labels) -> model output``.

    The class (or nothing) goes into SDXL's pooled-text slot as a learned vector; label -1 and
    dropped labels use a learned null vector. With no micro-signals the UNet's ``text_time``
    branch sees only the pooled slot. Cross-attention context is a single zero token, since the
    pixel presets have no text. With ``text=True`` (SDXL fine-tuning) the caller passes the text
    encoders' ``context`` and ``pooled`` instead, and there are no class vectors.
    """

    def __init__(self, unet: MicroCondUNet, embedder: MicroCondEmbedder, num_classes: int, text: bool = False,
                 class_dropout: float = 0.0, caption_dropout: float = 0.0, micro_center: torch.Tensor | None = None,
                 class_vector_std: float = 0.02) -> None:
        super().__init__()
        self.unet = unet
        self.embedder = embedder
        # Subtracted from the micro features before the conditioning MLP (see center_bias); not saved:
        # it is a function of the config.
        self.register_buffer("micro_center", micro_center if micro_center is not None else torch.zeros(embedder.out_dim), persistent=False)
        self.num_classes = num_classes
        self.class_dropout, self.caption_dropout = float(class_dropout), float(caption_dropout)
        self.pooled_dim = unet.add_embedding.linear_1.in_features - embedder.out_dim
        context_dim = unet.config.cross_attention_dim
        self.context_dim = context_dim if isinstance(context_dim, int) else context_dim[0]
        self.class_embedding: torch.nn.Embedding | None = None
        if not text:
            # Row num_classes is the null class (unconditional); 0 classes = always null.
            self.class_embedding = torch.nn.Embedding(num_classes + 1, self.pooled_dim)
            torch.nn.init.normal_(self.class_embedding.weight, std=class_vector_std)

    def sample_label_drop(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) bool: labels replaced by the null class, each with probability ``class_dropout``
        (DiT's LabelEmbedder.token_drop)."""
        return torch.rand(batch, generator=generator, device=self.embedder.device) < self.class_dropout

    def sample_caption_keep(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) float 0/1: 0 where the caption is dropped to zero context and pooled text, with
        probability ``caption_dropout`` (sgm's ucg_rate)."""
        return (torch.rand(batch, generator=generator, device=self.embedder.device) >= self.caption_dropout).float()

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        ids: torch.Tensor,
        drop: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: context (B, L, context_dim) and pooled (B, pooled_dim): text, for ``text=True``."""
        batch = x.shape[0]
        if (pooled is None) != (self.class_embedding is not None):
            raise ValueError("this denoiser was built " + ("with class vectors: pass labels, not text" if pooled is not None else "for text: pass context and pooled"))
        if pooled is None:
            if labels is None:
                labels = torch.full((batch,), -1, dtype=torch.long, device=x.device)
            rows = torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)  # (B,)
            pooled = self.class_embedding(rows)  # (B, pooled_dim)
        micro = self.embedder(ids, drop) - self.micro_center if self.embedder.n_ids else pooled.new_zeros(batch, 0)  # (B, n_ids*256)
        if context is None:
            context = x.new_zeros(batch, 1, self.context_dim)  # (B, 1, context_dim)
        kwargs = {"text_embeds": pooled, "micro_embeds": micro}
        return self.unet(x, t, context, added_cond_kwargs=kwargs).sample


def micro_center(embedder: MicroCondEmbedder, resolution: int) -> torch.Tensor:
    """(n_ids * 256,) Fourier features of SDXL's default query at ``resolution`` (original = target
    size, crop (0, 0)), in the embedder's signal order: what ``center_micro_features`` subtracts.

    Most of the 1536 features barely vary over a data set (low frequencies, a fixed target size).
    Adam moves each of their weights in the conditioning MLP's first layer by about lr per step,
    all in the same direction, so together they shift every unit's bias by hundreds of times lr
    per step and the units die (docs/results.md). Measured from the default query those features
    are near zero and carry no such drift; the layer computes the same family of functions, and
    :func:`center_bias` folds the offset back into its bias for an SDXL-exact export.
    """
    from microcond.cond.embedder import time_ids
    from microcond.cond.record import MicroCond

    size = (resolution, resolution)
    ids = embedder.select(time_ids([MicroCond(size, (0, 0), size)]))  # (1, 2 * n_signals)
    return embedder(ids, torch.zeros(1, len(embedder.signal_names), dtype=torch.bool))[0]  # (n_ids * 256,)


def center_bias(state: dict[str, torch.Tensor], center: torch.Tensor, pooled_dim: int, prefix: str = "unet.") -> dict[str, torch.Tensor]:
    """The state dict with the centre folded into the conditioning MLP's first bias, so that the
    plain UNet on uncentred features computes what the centred denoiser did:
    W [p; f - c] + b = W [p; f] + (b - W[:, pooled:] c)."""
    if not center.any():
        return state
    weight, bias = state[f"{prefix}add_embedding.linear_1.weight"], state[f"{prefix}add_embedding.linear_1.bias"]
    folded = (bias.double() - weight[:, pooled_dim:].double() @ center.double()).to(bias.dtype)
    return {**state, f"{prefix}add_embedding.linear_1.bias": folded}


def param_groups(model: Denoiser, cfg: ModelSettings) -> list[dict]:
    """AdamW groups: the UNet's conditioning MLP at ``add_embedding_lr`` when set, the rest at ``lr``;
    a zero-initialised conditioning output layer is kept out of weight decay (DiT, EDM2), which
    would otherwise pull it back to its start.

    The MLP's first layer takes 1536 Fourier features of the ids, most of them nearly constant
    (low frequencies, the fixed target size); Adam moves each of their weights by about lr per
    step, so together they shift a unit's pre-activation like a bias with a learning rate
    hundreds of times lr, and at lr 1e-3 units die (docs/results.md, crop ablation).
    """
    mlp = getattr(model.unet, "add_embedding", None)
    special = set(map(id, mlp.parameters())) if cfg.add_embedding_lr and mlp is not None else set()
    no_decay = set(map(id, mlp.linear_2.parameters())) if cfg.zero_init_conditioning and mlp is not None else set()
    groups = []
    for params, lr, decay in (
        ([p for p in model.parameters() if id(p) not in special and id(p) not in no_decay], cfg.lr, cfg.weight_decay),
        ([p for p in model.parameters() if id(p) in special and id(p) not in no_decay], cfg.add_embedding_lr, cfg.weight_decay),
        ([p for p in model.parameters() if id(p) in no_decay], cfg.add_embedding_lr or cfg.lr, 0.0),
    ):
        params = [p for p in params if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr, "base_lr": lr, "weight_decay": decay})
    return groups


class ConditioningHealth:
    """Live units of the conditioning MLP's hidden layer, in the EMA weights, on training inputs.

    A unit is live when its pre-activation exceeds -3 for some input (below that SiLU is flat near
    zero and the unit passes on nothing: class, size and crop are gone). The hook keeps the
    first ``rows`` inputs (pooled slot + Fourier features) the layer saw in the logging window;
    :meth:`report` passes them through the EMA copy of the layer, which is what samples are drawn
    with (the raw weights can read 128 of 128 while the EMA reads a handful). Reported as
    ``cond_units_live`` of ``cond_units`` in metrics.jsonl; the crop ablation measures the same.
    """

    THRESHOLD = -3.0
    NAME = "unet.add_embedding.linear_1"  # the layer's name in the denoiser's state dict

    def __init__(self, model: torch.nn.Module, rows: int = 1024, training_only: bool = True) -> None:
        self.rows, self.training_only = rows, training_only
        self.inputs: list[torch.Tensor] = []
        layer = dict(model.named_modules()).get(self.NAME)
        self.units = layer.out_features if layer is not None else 0
        if layer is not None:
            layer.register_forward_hook(self._observe)

    def _observe(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self.training_only and not module.training:  # a sample grid drawn mid-run is not training input
            return
        kept = sum(len(x) for x in self.inputs)
        if kept < self.rows:
            self.inputs.append(inputs[0].detach().flatten(0, -2)[: self.rows - kept].float())

    def live(self, weights: dict[str, torch.Tensor]) -> int:
        """Units of the layer with these weights (a state dict holding it) live on the kept inputs."""
        x = torch.cat(self.inputs)  # (rows, in_features)
        w, b = (weights[f"{self.NAME}.{k}"].to(x.device, torch.float32) for k in ("weight", "bias"))
        with torch.no_grad():
            return int((torch.nn.functional.linear(x, w, b) > self.THRESHOLD).any(dim=0).sum())

    def report(self, ema: dict[str, torch.Tensor]) -> dict:
        """The window's count in the EMA weights, then a new window."""
        if not self.inputs:
            return {}
        row = {"cond_units_live": self.live(ema), "cond_units": self.units}
        self.inputs = []
        return row

    @staticmethod
    def warning(row: dict) -> str | None:
        """One line when a logged row shows fewer than a quarter of the units live, else None."""
        live, units = row.get("cond_units_live"), row.get("cond_units")
        if live is None or not units or live >= units / 4:
            return None
        return (f"warning: at step {row.get('step')} only {live} of {units} units of the conditioning MLP are live in the EMA weights: "
                "class and micro-conditions barely reach the model (pixel presets: --center-micro-features on; or a lower --add-embedding-lr)")


def build_denoiser(cfg: ModelSettings) -> Denoiser:
    """The denoiser a config describes: the preset's UNet (or --pretrained's) with its embedder."""
    embedder = MicroCondEmbedder(signals=cfg.signals, dropout=cfg.cond_dropout)
    unet = build_unet(cfg.preset, cfg.resolution, embedder, cfg.pretrained, time_embed_dim=cfg.time_embed_dim)
    if cfg.zero_init_conditioning:  # the conditions start with no effect and grow in (DiT's adaLN-Zero)
        torch.nn.init.zeros_(unet.add_embedding.linear_2.weight)
        torch.nn.init.zeros_(unet.add_embedding.linear_2.bias)
    if cfg.lora_rank:
        from microcond.lora import add_lora

        add_lora(unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_add_embedding)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    center = micro_center(embedder, cfg.resolution) if cfg.center_micro_features and embedder.n_ids else None
    return Denoiser(unet, embedder, cfg.num_classes, text=bool(cfg.text_encoders), class_dropout=cfg.class_dropout, caption_dropout=cfg.caption_dropout,
                    micro_center=center, class_vector_std=cfg.class_vector_std)


def trained_state(model: torch.nn.Module, lora: bool) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the model: its whole state, or with LoRA only the trained
    parameters (the frozen rest is the pretrained UNet, read from --pretrained again)."""
    if not lora:
        return model.state_dict()
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def load_trained(model: torch.nn.Module, tensors: dict[str, torch.Tensor], lora: bool) -> None:
    """Load :func:`trained_state`'s tensors; with LoRA, refuse any that are not a trained parameter
    and any trained parameter that is missing."""
    if not lora:
        model.load_state_dict(tensors)
        return
    trained = set(trained_state(model, lora))
    if set(tensors) != trained:
        extra, missing = sorted(set(tensors) - trained), sorted(trained - set(tensors))
        raise ValueError(f"checkpoint does not match the LoRA model: {len(extra)} unexpected tensors {extra[:2]}, {len(missing)} missing {missing[:2]}")
    model.load_state_dict(tensors, strict=False)
