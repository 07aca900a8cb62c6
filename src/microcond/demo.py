"""``microcond demo``: the smallest end-to-end run of what exists.

Today that is the micro-conditioning core: SDXL ids -> Fourier features -> a small randomly
initialised SDXL-layout UNet, checked against diffusers' own path. The demo data, training
and sampling stages replace it as they land.
"""

from __future__ import annotations

import torch

from microcond.conditions import MicroCond, MicroCondEmbedder, time_ids
from microcond.model import MicroCondUNet, check_embedder_matches

POOLED_DIM = 32


def tiny_unet(seed: int = 0) -> MicroCondUNet:
    """A small random ``text_time`` UNet with SDXL's conditioning layout (6 ids x 256)."""
    torch.manual_seed(seed)
    return MicroCondUNet(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=32,
        cross_attention_dim=POOLED_DIM,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=POOLED_DIM + 6 * 256,
    )


def run_demo(seed: int = 0) -> None:
    """Print what the conditioning core does on a small random UNet."""
    print("microcond demo: the micro-conditioning core end to end (demo data and training are not built yet)")
    unet = tiny_unet(seed).eval()
    embedder = MicroCondEmbedder().eval()
    check_embedder_matches(unet, embedder, POOLED_DIM)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"  UNet2DConditionModel (text_time), {n_params / 1e6:.2f} M parameters, 32 px")

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, 32, 32, generator=g)
    t = torch.tensor([500])
    context = torch.zeros(1, 1, POOLED_DIM)
    pooled = torch.zeros(1, POOLED_DIM)
    queries = {
        "small original 64x64, uncropped": MicroCond((64, 64), (0, 0), (1024, 1024)),
        "large original 1024x1024, uncropped": MicroCond((1024, 1024), (0, 0), (1024, 1024)),
        "large original, crop (256, 0)": MicroCond((1024, 1024), (256, 0), (1024, 1024)),
    }
    with torch.no_grad():
        ids = time_ids(list(queries.values()))  # (3, 6)
        ours, theirs = [], []
        for i in range(len(queries)):
            kw = {"text_embeds": pooled, "micro_embeds": embedder(ids[i : i + 1])}
            ours.append(unet(x, t, context, added_cond_kwargs=kw).sample)
            theirs.append(unet(x, t, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids[i : i + 1]}).sample)
        null = unet(x, t, context, added_cond_kwargs={"text_embeds": pooled, "micro_embeds": embedder(ids[:1], embedder.null_drop(1))}).sample
    agree = max((a - b).abs().max().item() for a, b in zip(ours, theirs))
    print(f"  our embedding path vs diffusers' own path, max |difference| of UNet outputs: {agree:.2e}")
    base = ours[0]
    for (name, cond), out in zip(queries.items(), ours):
        print(f"  ids {cond.ids}  {name:<38} output change vs first query: {(out - base).abs().mean().item():.4f}")
    print(f"  null (dropped) condition, which diffusers cannot express: change {(null - base).abs().mean().item():.4f}")
