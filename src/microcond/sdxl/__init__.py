"""SDXL fine-tuning: VAE latents, the two text encoders, captions, a latent cache (the export of a
fine-tuned pipeline is in :mod:`microcond.sample.export`).

Conditioning as published (SDXL section 2.1, sgm ``GeneralConditioner``; diffusers
``StableDiffusionXLPipeline.encode_prompt`` is the oracle in the tests): the cross-attention
context is ``concat(penultimate hidden states of CLIP ViT-L, penultimate hidden states of OpenCLIP
bigG)`` per token (768 + 1280 = 2048), and the pooled slot of the ``text_time`` embedding holds
bigG's projected pooled output (1280). A dropped caption zeroes both (sgm ``ucg_rate``).

Latents are the VAE posterior's mean, shifted and scaled by the VAE config
(``(mean - shift_factor) * scaling_factor``). The mean is deterministic, so a cached latent
equals a freshly encoded one; sgm samples from the posterior instead.

Everything is read from local folders (``local_files_only=True``); nothing is downloaded.
"""

from microcond.sdxl.folders import TEXT_PARTS, folder_identity, require_folder
from microcond.sdxl.inputs import SDXLInputs
from microcond.sdxl.latents import LatentBatches, LatentCache, LatentSpace
from microcond.sdxl.text import TextCache, TextEncoders, read_captions

__all__ = ["LatentBatches", "LatentCache", "LatentSpace", "SDXLInputs", "TEXT_PARTS", "TextCache", "TextEncoders",
           "folder_identity", "read_captions", "require_folder"]
