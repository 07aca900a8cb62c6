"""SDXL fine-tuning path with tiny random models of the real diffusers/transformers classes.

Oracle: diffusers' StableDiffusionXLPipeline (encode_prompt, _get_add_time_ids, the pipeline
loading our export). The latent cache is checked against re-encoding each epoch's crops.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RecordingNet
from PIL import Image

from microcond.cli.main import main
from microcond.cond.embedder import MicroCond
from microcond.data.loader import BucketBatches
from microcond.data.shards import index_shards
from microcond.sdxl import LatentBatches, LatentCache, LatentSpace, TextEncoders, read_captions
from microcond.train import config as config_mod
from microcond.train.batch import Batch
from microcond.train.loop import step_generator
from microcond.train.loss import DiffusionLoss

BUCKETS = "64x64,48x80"


def write_tiny_sdxl(folder: str | Path, seed: int = 0, text_width: int = 32) -> Path:
    """A tiny random SDXL-layout checkpoint folder (unet/, vae/, text encoders, tokenizers, scheduler/).

    Same diffusers/transformers classes and conditioning layout as SDXL base, with small widths
    (context ``2 * text_width``, pooled ``text_width``) and a byte-level CLIP tokenizer written here.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    # CLIP's byte-level alphabet (GPT-2 bytes_to_unicode): each byte alone, and as a word end.
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    for name in ("tokenizer", "tokenizer_2"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "vocab.json").write_text(json.dumps(vocab))
        (folder / name / "merges.txt").write_text("#version: 0.2\n")
        (folder / name / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}))
    text = CLIPTextConfig(vocab_size=len(vocab), hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=text_width,
                          bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1)
    CLIPTextModel(text).save_pretrained(folder / "text_encoder")
    CLIPTextModelWithProjection(text).save_pretrained(folder / "text_encoder_2")
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16,) * 4,
                  layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=0.13025).save_pretrained(folder / "vae")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                         attention_head_dim=(2, 4), cross_attention_dim=2 * text_width, use_linear_projection=True,
                         addition_embed_type="text_time", addition_time_embed_dim=256,
                         projection_class_embeddings_input_dim=text_width + 6 * 256).save_pretrained(folder / "unet")
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading",
                           steps_offset=1).save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_sdxl(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """16 images of mixed sizes and aspects; captions in metadata.jsonl, one as a sidecar .txt, one missing."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(16):
        h, w = (int(rng.integers(40, 100)), int(rng.integers(40, 100))) if i % 2 else (int(rng.integers(50, 70)), int(rng.integers(90, 130)))
        yy, xx = np.mgrid[:h, :w]
        pixels = np.stack([(xx * 5 + i * 20) % 256, (yy * 3) % 256, np.full((h, w), (i * 37) % 256)], -1).astype(np.uint8)
        name = f"img{i:02d}.png"
        Image.fromarray(pixels).save(folder / name)
        if i == 0:
            (folder / "img00.txt").write_text("a sidecar caption\n")
        elif i != 1:
            lines.append(json.dumps({"file": name, "caption": f"picture number {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture()
def cache_env(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MICROCOND_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MICROCOND_NO_REEXEC", "1")
    return tmp_path / "cache"


def dataset(images: Path, cache: Path, **kw) -> BucketBatches:
    from microcond.data.buckets import parse_buckets
    from microcond.data.loader import open_source

    source = open_source(images, cache_dir=cache)
    return BucketBatches(source, parse_buckets(kw.pop("buckets", BUCKETS)), 2, seed=kw.pop("seed", 3), rank=0, world_size=1, **kw)


def test_text_encoders_match_the_pipelines_encode_prompt(tiny):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    text = TextEncoders(tiny)
    captions = ["a red cube on a table", ""]
    context, pooled = text.encode(captions)
    pipe = StableDiffusionXLPipeline(vae=AutoencoderKL.from_pretrained(tiny / "vae"), text_encoder=text.encoders[0], text_encoder_2=text.encoders[1],
                                     tokenizer=text.tokenizers[0], tokenizer_2=text.tokenizers[1],
                                     unet=UNet2DConditionModel.from_pretrained(tiny / "unet"), scheduler=EulerDiscreteScheduler.from_pretrained(tiny / "scheduler"))
    embeds, _, pooled_ref, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
    assert context.shape == (2, 77, 64) and pooled.shape == (2, 32)
    torch.testing.assert_close(context, embeds.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, pooled_ref.float(), rtol=0, atol=1e-6)
    assert not torch.equal(context[0], context[1])


def test_text_cache_equals_encoding_and_frees_the_encoders(tiny, images, cache_env):
    from microcond.sdxl import SDXLInputs, TextCache

    text = TextEncoders(tiny)
    captions = ["a red cube on a table", "", "a red cube on a table", "two birds"]
    cache = TextCache.build(captions, text, cache_env, progress=False)
    assert len(cache.row_of) == 3 and cache.disk_bytes() > 3 * 77 * 64 * 2
    context, pooled = cache.lookup(captions)
    ref_context, ref_pooled = text.encode(captions)
    torch.testing.assert_close(context, ref_context, rtol=1e-3, atol=1e-3)  # float16 on disk
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-3, atol=1e-3)
    assert TextCache.build(list(reversed(captions)), text, cache_env, progress=False).folder == cache.folder  # reused
    cfg = config_mod.resolve("sdxl", overrides={"pretrained": str(tiny), "data": str(images), "text_cache": "on", "resolution": 64, "buckets": BUCKETS})
    stage = SDXLInputs(cfg, torch.device("cpu"))
    stage.captions = captions
    stage.use_text_cache()
    assert stage.text.encoders == []  # the encoders' memory is released
    batch = stage.prepare({"pixels": torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "ids": torch.zeros(2, 6, dtype=torch.long),
                           "labels": torch.full((2,), -1), "index": torch.tensor([3, 1])})
    torch.testing.assert_close(batch.context, ref_context[[3, 1]], rtol=1e-3, atol=1e-3)
    assert batch.x0.shape == (2, 4, 8, 8)  # the VAE's latents of the pixels


def test_latent_space_uses_the_vae_config(tiny):
    from diffusers import AutoencoderKL

    space = LatentSpace(tiny / "vae")
    pixels = torch.randint(0, 256, (2, 3, 48, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    latents = space.encode(pixels)
    assert latents.shape == (2, 4, 6, 10) and space.latent_shape((48, 80)) == (4, 6, 10)
    vae = AutoencoderKL.from_pretrained(tiny / "vae")
    with torch.no_grad():
        mean = vae.encode(pixels.float() / 127.5 - 1).latent_dist.mean
    torch.testing.assert_close(latents, mean * vae.config.scaling_factor)
    assert space.decode(latents).shape == (2, 3, 48, 80)
    with pytest.raises(ValueError, match="multiple of the VAE's downscale 8"):
        space.latent_shape((36, 64))


def test_captions_from_metadata_sidecar_and_shards(images, cache_env, tmp_path):
    source = dataset(images, cache_env).source
    captions, missing = read_captions(source, images)
    by_name = {Path(n).name: c for n, c in zip(source.names, captions)}
    assert by_name["img00.png"] == "a sidecar caption" and by_name["img05.png"] == "picture number 5"
    assert by_name["img01.png"] == "" and missing == 1
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for key, extra in (("a", {"txt": b"from txt"}), ("b", {"json": json.dumps({"caption": "from json"}).encode()}), ("c", {})):
            png = io.BytesIO()
            Image.new("RGB", (8, 6)).save(png, "PNG")
            for ext, data in {"png": png.getvalue(), **extra}.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    shard_source = index_shards([shard])
    assert read_captions(shard_source, shard) == (["from txt", "from json", ""], 1)
    # A tar cut inside sample c: the intact samples keep their captions, nothing raises.
    with tarfile.open(shard) as tar:
        cut_at = tar.getmember("c.png").offset + 600
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[:cut_at])
    cut_source = index_shards([cut])
    assert [n.rsplit(":", 1)[1] for n in cut_source.names] == ["a", "b"] and len(cut_source.skipped) == 1
    assert read_captions(cut_source, cut) == (["from txt", "from json"], 0)


def test_pickled_weights_are_refused(tiny, tmp_path):
    """Only safetensors load: a folder whose UNet is a pickled .bin gets one error naming the file kind."""
    import shutil

    from diffusers import UNet2DConditionModel

    from microcond.cond.embedder import MicroCondEmbedder
    from microcond.model import build_unet

    folder = tmp_path / "pickled"
    shutil.copytree(tiny / "unet", folder / "unet")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    UNet2DConditionModel.from_pretrained(tiny / "unet").save_pretrained(folder / "unet", safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(OSError, match="safetensors"):
        build_unet("sdxl", 64, MicroCondEmbedder(), str(folder))


def test_latent_cache_keeps_each_crop_and_matches_reencoding(tiny, images, cache_env):
    data = dataset(images, cache_env, crop_mode="random", flip_probability=0.5)
    space = LatentSpace(tiny / "vae")
    cache = LatentCache.build(data, space, crops=2, cache_dir=cache_env, progress=False)
    cached = LatentBatches(data.source, data.buckets, 2, seed=3, rank=0, world_size=1, crop_mode="random",
                           flip_probability=0.5, latent_cache=cache)
    # Epochs 0 and 1: exactly the crops (and ids) re-encoding gives; epoch 2 repeats crop 0.
    carry = data.position.carry
    for epoch in range(3):
        batches, carry_next = data.plan(epoch, carry)
        carry = carry_next
        for bucket, rows in batches[:3]:
            mine = cached.make_batch(epoch, bucket, rows)
            fresh = data.make_batch(epoch % 2, bucket, rows)
            assert torch.equal(mine["ids"], fresh["ids"]) and torch.equal(mine["index"], fresh["index"])
            torch.testing.assert_close(mine["latents"], space.encode(fresh["pixels"]), atol=2e-3, rtol=2e-3)
    assert cache.ids.shape == (16, 2, 6)
    assert (cache.ids[:, 0] != cache.ids[:, 1]).any()  # random crops and flips differ between the cached crops
    ids = cache.ids[:, 0]
    for (oh, ow, top, left, th, tw) in ids.tolist():  # every cached crop lies inside its resized image
        MicroCond((oh, ow), (top, left), (th, tw)).check_crop_inside()
    sizes = cache.sizes()
    assert sizes["disk_bytes"] >= sizes["latent_bytes"] == 2 * int(cache.offsets[-1]) > 0


def test_latent_cache_key_covers_every_setting_that_changes_it(tiny, images, cache_env, tmp_path):
    space = LatentSpace(tiny / "vae")
    base = LatentCache.key_for(dataset(images, cache_env), space, 2)[0]
    assert LatentCache.key_for(dataset(images, cache_env), space, 2)[0] == base
    changed = [
        LatentCache.key_for(dataset(images, cache_env, crop_mode="center"), space, 2)[0],
        LatentCache.key_for(dataset(images, cache_env, flip_probability=0.5), space, 2)[0],
        LatentCache.key_for(dataset(images, cache_env, buckets="64x64"), space, 2)[0],
        LatentCache.key_for(dataset(images, cache_env, seed=4), space, 2)[0],
        LatentCache.key_for(dataset(images, cache_env), space, 3)[0],
    ]
    other = write_tiny_sdxl(tmp_path / "other", seed=1)
    changed.append(LatentCache.key_for(dataset(images, cache_env), LatentSpace(other / "vae"), 2)[0])
    told = dataset(images, cache_env)  # the cached ids carry the original size the model is told
    told.source.effective_sizes, told.source.size_source = told.source.original_sizes // 2, "effective"
    changed.append(LatentCache.key_for(told, space, 2)[0])
    assert len(set(changed)) == len(changed) and base not in changed
    first = LatentCache.build(dataset(images, cache_env, crop_mode="center"), space, 4, cache_env, progress=False)
    assert first.crops == 1  # centre crops without flips are the same every epoch
    again = LatentCache.build(dataset(images, cache_env, crop_mode="center"), space, 4, cache_env, progress=False)
    assert again.folder == first.folder and (first.folder / "values.npy").stat().st_mtime_ns == (again.folder / "values.npy").stat().st_mtime_ns


def test_caption_dropout_zeroes_context_and_pooled_per_sample_from_the_step_generator():
    cfg = config_mod.resolve("tiny", overrides={"caption_dropout": 0.5})
    net = RecordingNet(cfg)
    batch = Batch(x0=torch.randn(8, 4, 4, 4), ids=torch.zeros(8, 6, dtype=torch.long), labels=torch.zeros(8, dtype=torch.long),
                  context=torch.ones(8, 5, 3), pooled=torch.ones(8, 2))
    loss_fn = DiffusionLoss(cfg)
    loss_fn(net, batch, step_generator(0, 7, torch.device("cpu")), slice(0, 8), 8)
    context, pooled = net.seen[-1]["context"], net.seen[-1]["pooled"]
    kept = context.flatten(1).amax(1) > 0  # (8,)
    assert 0 < kept.sum() < 8  # some dropped, some kept at p=0.5 for this seed
    assert torch.equal(pooled.amax(1) > 0, kept) and set(context.unique().tolist()) <= {0.0, 1.0}
    # A rank holding rows 4:8 of the optimizer batch drops exactly those rows' captions.
    half = Batch(x0=batch.x0[4:], ids=batch.ids[4:], labels=batch.labels[4:], context=batch.context[4:], pooled=batch.pooled[4:])
    loss_fn(net, half, step_generator(0, 7, torch.device("cpu")), slice(4, 8), 8)
    assert torch.equal(net.seen[-1]["context"].flatten(1).amax(1) > 0, kept[4:])


def test_errors_name_the_flag(tiny, tmp_path, cache_env, capsys):
    with pytest.raises(ValueError, match="--vae '/nope' must be a local folder"):
        LatentSpace("/nope")
    with pytest.raises(ValueError, match="--text-encoders .* missing text_encoder_2, tokenizer,"):
        (tmp_path / "half" / "text_encoder").mkdir(parents=True)
        TextEncoders(tmp_path / "half")
    with pytest.raises(ValueError, match="num_classes"):
        config_mod.resolve("sdxl", overrides={"pretrained": str(tiny), "num_classes": 3})
    with pytest.raises(ValueError, match="latent_cache"):
        config_mod.resolve("tiny", overrides={"latent_cache": "on"})
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        config_mod.resolve("tiny", overrides={"gradient_checkpointing": "maybe"})
    cfg = config_mod.resolve("sdxl", overrides={"pretrained": str(tiny)})
    assert (cfg.vae, cfg.text_encoders) == (str(tiny / "vae"), str(tiny))
    assert config_mod.resolve("tiny") == config_mod.resolve("tiny", overrides={"vae": None})  # pixel presets unchanged
    assert main(["train", "--preset", "sdxl", "--pretrained", str(tiny), "--vae", str(tmp_path / "missing"), "--data", str(tmp_path),
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--vae" in err[0] and "nothing is downloaded" in err[0]


def test_train_cached_latents_with_text_export_and_sample_in_the_sdxl_pipeline(tiny, images, cache_env, tmp_path):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    run = tmp_path / "run"
    flags = ["--preset", "sdxl", "--pretrained", str(tiny), "--data", str(images), "--out", str(run), "--resolution", "64",
             "--buckets", BUCKETS, "--batch-size", "2", "--steps", "3", "--precision", "fp32", "--lr", "1e-3", "--log-every", "1",
             "--sample-every", "3", "--latent-cache", "on", "--latent-crops", "2", "--gradient-checkpointing", "on", "--text-cache", "on", "--no-progress"]
    assert main(["train", *flags]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    grid = np.asarray(Image.open(run / "samples" / "step-00000003.png"))
    assert grid.ndim == 3 and grid.std() > 0  # decoded through the VAE
    assert len(list(cache_env.glob("latents-*"))) == 1 and len(list(cache_env.glob("text-*"))) == 1

    assert main(["export", str(run), "--pipeline", str(tmp_path / "pipe")]) == 0
    exported = UNet2DConditionModel.from_pretrained(tmp_path / "pipe" / "unet")
    assert not torch.equal(exported.state_dict()["conv_in.weight"], UNet2DConditionModel.from_pretrained(tiny / "unet").state_dict()["conv_in.weight"])
    direct = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_pretrained(tiny / "vae"), text_encoder=CLIPTextModel.from_pretrained(tiny / "text_encoder"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(tiny / "text_encoder_2"),
        tokenizer=CLIPTokenizer.from_pretrained(tiny / "tokenizer"), tokenizer_2=CLIPTokenizer.from_pretrained(tiny / "tokenizer_2"),
        unet=exported, scheduler=EulerDiscreteScheduler.from_pretrained(tiny / "scheduler"))
    folder = StableDiffusionXLPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)

    time_ids = []
    for pipe in (direct, folder):
        pipe.unet.register_forward_pre_hook(lambda m, a, kw: time_ids.append(kw["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True)

    def run_pipe(pipe, **micro):
        out = pipe("picture number 3", height=48, width=80, num_inference_steps=2, guidance_scale=1.0, output_type="np",
                   generator=torch.Generator().manual_seed(0), **micro).images
        return out[0]

    default = dict(original_size=(48, 80), crops_coords_top_left=(0, 0), target_size=(48, 80))
    for pipe in (direct, folder):
        base = run_pipe(pipe, **default)
        assert time_ids[-1].tolist() == [[48, 80, 0, 0, 48, 80]]  # SDXL's (h, w) and (top, left) order reaches the UNet
        for change in (dict(original_size=(24, 40)), dict(crops_coords_top_left=(16, 8)), dict(target_size=(96, 160))):
            other = run_pipe(pipe, **{**default, **change})
            expected = MicroCond(**{"original_size": default["original_size"], "crop_top_left": default["crops_coords_top_left"],
                                    "target_size": default["target_size"], **{{"crops_coords_top_left": "crop_top_left"}.get(k, k): v for k, v in change.items()}})
            assert time_ids[-1].tolist() == [list(expected.ids)]
            assert np.abs(other - base).max() > 1e-4, change  # the micro-condition changes the output
    np.testing.assert_allclose(run_pipe(direct, **default), run_pipe(folder, **default), atol=1e-5)


def test_sample_a_text_run_from_prompts(tiny, images, cache_env, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "out"
    assert main(["train", "--preset", "sdxl", "--pretrained", str(tiny), "--data", str(images), "--out", str(run), "--resolution", "64",
                 "--buckets", BUCKETS, "--batch-size", "2", "--steps", "2", "--lr", "1e-3", "--precision", "fp32", "--sample-every", "0",
                 "--no-progress"]) == 0
    common = ["--steps", "2", "--guidance", "3", "--original-size", "128", "128"]

    def draw(name: str, *flags: str) -> np.ndarray:
        assert main(["sample", str(run), *common, "--out", str(out / name), *flags]) == 0, capsys.readouterr().err
        return np.stack([np.asarray(Image.open(p)).astype(int) for p in sorted((out / name).glob("seed-*.png"))])

    (tmp_path / "prompts.txt").write_text("a red circle\n\na blue square\n")
    both = draw("both", "--prompts", str(tmp_path / "prompts.txt"), "--n", "2")
    assert both.shape == (2, 64, 64, 3) and both.std() > 0  # decoded through the VAE at the run's resolution
    first = draw("first", "--prompt", "a red circle", "--n", "1")
    second = draw("second", "--prompt", "a blue square", "--n", "1", "--seed", "1")
    # Sample i takes prompt i and seed i (up to float summation order across batch shapes: one level of 255).
    assert np.abs(both[0] - first[0]).max() <= 1 and np.abs(both[1] - second[0]).max() <= 1
    assert np.abs(draw("other", "--prompt", "a blue square", "--n", "1") - first).max() > 1  # the prompt reaches the UNet
    assert np.abs(draw("negative", "--prompt", "a red circle", "--n", "1", "--negative-prompt", "blurry") - first).max() > 1
    micro = draw("micro", "--prompt", "a red circle", "--n", "1", "--micro-guidance", "5")
    assert np.abs(micro - first).max() > 1
    capsys.readouterr()
    assert main(["sample", str(run), *common, "--out", str(out / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained with text: give --prompt" in err[0], err


def test_pipeline_export_never_writes_into_a_folder_it_reads(tiny, images, cache_env, tmp_path, capsys, monkeypatch):
    from microcond import sdxl
    from microcond.sample import export as sdxl_export

    run = tmp_path / "run"
    assert main(["train", "--preset", "sdxl", "--pretrained", str(tiny), "--data", str(images), "--out", str(run), "--resolution", "64",
                 "--buckets", BUCKETS, "--batch-size", "2", "--steps", "1", "--precision", "fp32", "--sample-every", "0", "--no-progress"]) == 0
    capsys.readouterr()
    identity = sdxl.folder_identity(tiny)
    for out, source in ((tiny, "--pretrained"), (tiny / "unet", "--pretrained"), (tiny.parent, "RUN"), (run / "pipe", "RUN")):
        assert main(["export", str(run), "--pipeline", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--pipeline {out} overlaps {source}" in err[0], err
    assert sdxl.folder_identity(tiny) == identity and not (run / "pipe").exists()

    def fail(src: str, dst: str) -> str:
        raise OSError("disk full")

    with monkeypatch.context() as patch:  # a failure halfway leaves nothing behind
        patch.setattr(sdxl_export, "_link_or_copy", fail)
        assert main(["export", str(run), "--pipeline", str(tmp_path / "pipe")]) == 1  # a failure of the work, not of usage
    assert "disk full" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]
    for _ in range(2):  # the second replaces the first
        assert main(["export", str(run), "--pipeline", str(tmp_path / "pipe")]) == 0
    assert (tmp_path / "pipe" / "model_index.json").is_file() and sdxl.folder_identity(tiny) == identity
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "pipe", "run"]
