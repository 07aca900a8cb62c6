"""The bridge to diffusers' UNet2DConditionModel (text_time): same output, plus the null condition."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from microcond import MicroCond, MicroCondEmbedder, MicroCondUNet, time_ids
from microcond.model import check_embedder_matches

POOLED = 16


def tiny_config(n_ids: int = 6) -> dict:
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=24,
        attention_head_dim=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=POOLED + n_ids * 256,
    )


@pytest.fixture(scope="module")
def unets():
    torch.manual_seed(0)
    reference = UNet2DConditionModel(**tiny_config()).eval()
    ours = MicroCondUNet(**tiny_config()).eval()
    missing, unexpected = ours.load_state_dict(reference.state_dict(), strict=True)
    assert not missing and not unexpected  # identical parameter names: an SDXL checkpoint loads unchanged
    return reference, ours


def inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    context = torch.randn(batch, 5, 24, generator=g)
    pooled = torch.randn(batch, POOLED, generator=g)
    return x, t, context, pooled


def test_our_embedding_path_equals_diffusers_path(unets):
    reference, ours = unets
    conds = [MicroCond((1023, 517), (0, 33), (512, 512)), MicroCond((64, 2049), (7, 0), (256, 1024)), MicroCond((1, 1), (0, 0), (1, 1))]
    ids = time_ids(conds)
    x, t, context, pooled = inputs(len(conds))
    embedder = MicroCondEmbedder().eval()
    check_embedder_matches(ours, embedder, POOLED)
    with torch.no_grad():
        expected = reference(x, t, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
        got = ours(x, t, context, added_cond_kwargs={"text_embeds": pooled, "micro_embeds": embedder(ids)}).sample
        plain = ours(x, t, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(plain, expected)  # without micro_embeds it is exactly the parent class


def test_micro_conditions_reach_the_output(unets):
    _, ours = unets
    x, t, context, pooled = inputs(1)
    embedder = MicroCondEmbedder().eval()

    def run(cond: MicroCond, drop=None) -> torch.Tensor:
        ids = time_ids([cond])
        with torch.no_grad():
            return ours(x, t, context, added_cond_kwargs={"text_embeds": pooled, "micro_embeds": embedder(ids, drop)}).sample

    small = run(MicroCond((64, 64), (0, 0), (512, 512)))
    large = run(MicroCond((1024, 1024), (0, 0), (512, 512)))
    null = run(MicroCond((64, 64), (0, 0), (512, 512)), embedder.null_drop(1))
    assert not torch.allclose(small, large)
    assert not torch.allclose(small, null)


def test_null_condition_equals_zero_block_through_add_embedding(unets):
    # The dropped condition is the zero vector in the add_embedding input, as in sgm.
    _, ours = unets
    embedder = MicroCondEmbedder().eval()
    ids = time_ids([MicroCond((300, 200), (5, 0), (256, 256))] * 2)
    drop = torch.tensor([[False, True, False], [True, True, True]])
    emb = embedder(ids, drop)  # (2, 1536)
    pooled = torch.randn(2, POOLED)
    manual = torch.cat([pooled, emb], dim=1)
    manual[0, POOLED + 512 : POOLED + 1024] = 0  # crop block of sample 0 is zero
    manual[1, POOLED:] = 0
    aug = ours.get_aug_embed(torch.zeros(2, 128), None, {"text_embeds": pooled, "micro_embeds": emb})
    torch.testing.assert_close(aug, ours.add_embedding(manual))


def test_width_mismatch_is_a_clear_error(unets):
    _, ours = unets
    refiner = MicroCondEmbedder(signals=("original_size", "crop_top_left"), extra=("aesthetic_score",))
    with pytest.raises(ValueError, match="5 ids"):
        check_embedder_matches(ours, refiner, POOLED)
    x, t, context, pooled = inputs(1)
    ids = refiner.ids([MicroCond((64, 64), (0, 0), (64, 64))], extra={"aesthetic_score": [6.0]})
    with pytest.raises(ValueError, match="width 1280"):
        ours(x, t, context, added_cond_kwargs={"text_embeds": pooled, "micro_embeds": refiner(ids)})


def test_refiner_layout_matches_diffusers():
    # The SDXL refiner: 5 ids (original size, crop, aesthetic score).
    torch.manual_seed(1)
    reference = UNet2DConditionModel(**tiny_config(n_ids=5)).eval()
    ours = MicroCondUNet(**tiny_config(n_ids=5)).eval()
    ours.load_state_dict(reference.state_dict())
    refiner = MicroCondEmbedder(signals=("original_size", "crop_top_left"), extra=("aesthetic_score",))
    check_embedder_matches(ours, refiner, POOLED)
    ids = refiner.ids([MicroCond((1024, 768), (0, 0), (1024, 1024))] * 2, extra={"aesthetic_score": [6.0, 2.5]})
    x, t, context, pooled = inputs(2)
    with torch.no_grad():
        expected = reference(x, t, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
        got = ours(x, t, context, added_cond_kwargs={"text_embeds": pooled, "micro_embeds": refiner(ids)}).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_keeps_ids_exact_and_matches_fp32(unets):
    _, ours = unets
    embedder = MicroCondEmbedder().eval()
    ids = time_ids([MicroCond((1023, 517), (0, 3), (512, 512))])
    x, t, context, pooled = inputs(1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        emb = embedder(ids)
        out = ours(x, t, context, added_cond_kwargs={"text_embeds": pooled, "micro_embeds": emb}).sample
    assert emb.dtype == torch.float32 and ids.tolist() == [[1023, 517, 0, 3, 512, 512]]
    with torch.no_grad():
        ref = ours(x, t, context, added_cond_kwargs={"text_embeds": pooled, "micro_embeds": embedder(ids)}).sample
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean()
