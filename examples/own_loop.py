"""Micro-conditioning in a plain PyTorch training loop: a diffusers UNet2DConditionModel learns
from a folder of images, with SDXL's time ids (original size, crop, target size) made by
microcond's crop step, true for the pixels it crops.

    python examples/own_loop.py IMAGE_FOLDER --steps 200 --resolution 32

diffusers embeds ``time_ids`` in the UNet's dtype: keep that float32 (in bf16, 1023 becomes
1024), or use ``microcond.MicroCondUNet``, which takes the features precomputed in float32.
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel

from microcond import CropStep

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    files = sorted(f for f in args.folder.iterdir() if f.suffix.lower() in SUFFIXES)
    width = 32  # the pooled slot (text in SDXL; zeros here) and the cross-attention context
    unet = UNet2DConditionModel(
        sample_size=args.resolution, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width, attention_head_dim=8, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=width + 6 * 8)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-4)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(args.steps):
        epoch, first = divmod(step * args.batch_size, len(files))
        crop = CropStep(buckets=f"square:{args.resolution}", flip_probability=0.5, seed=0, epoch=epoch)
        batch = [crop({"__key__": f.name, "image": f.read_bytes()}) for f in (files * 2)[first:first + args.batch_size]]
        pixels = torch.stack([s["pixels"] for s in batch]).float() / 127.5 - 1  # (B, 3, R, R) in [-1, 1]
        time_ids = torch.stack([s["time_ids"] for s in batch])  # (B, 6): original size, crop top-left, target size
        noise = torch.randn(pixels.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), generator=generator)
        context, pooled = torch.zeros(len(batch), 1, width), torch.zeros(len(batch), width)  # no text
        prediction = unet(scheduler.add_noise(pixels, noise, t), t, context,
                          added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.float()}).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return losses


if __name__ == "__main__":
    main()
