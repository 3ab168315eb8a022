"""The text-encoder fit (``fmn_patch.methods.encoder``): prompts naming the concept encode as the anchor's, others
as before; the base is untouched, the same inputs and seed give the same factors, and the factors go into a patch
that stock diffusers loads."""

from __future__ import annotations

import pytest
import torch
from conftest import random_patch

from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import apply_patches, remove_patches
from fmn_patch.methods.encoder import EncoderFitConfig, EncoderPrompts, fit_encoder, with_encoder_factors
from fmn_patch.methods.inversion import LearnedTokens

PROMPTS = EncoderPrompts(
    erase=("a photo of bob", "bob in red"),
    targets=("a photo of a person", "a person in red"),
    preserve=("a photo of a cat", "a cat in red", "a photo of a dog", "a red circle"),
)
FIT = EncoderFitConfig(steps=60, lr=1e-2, rank=2)


def states(base, prompts):
    return base.family.text.encode(list(prompts)).states


def test_the_fit_moves_erased_prompts_to_their_anchors_keeps_the_rest_and_leaves_the_base(sd1):
    before = {k: v.clone() for k, v in sd1.pipe.text_encoder.state_dict().items()}
    erased0, target, kept0 = (
        states(sd1, PROMPTS.erase),
        states(sd1, PROMPTS.targets),
        states(sd1, PROMPTS.preserve),
    )
    fitted = fit_encoder(sd1, PROMPTS, FIT)
    assert list(fitted) == ["text_encoder"]
    factors = fitted["text_encoder"]
    after = sd1.pipe.text_encoder.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(factors) == [
        f"text_model.encoder.layers.1.{m}"
        for m in (
            "mlp.fc1",
            "mlp.fc2",
            "self_attn.k_proj",
            "self_attn.out_proj",
            "self_attn.q_proj",
            "self_attn.v_proj",
        )
    ]
    own = random_patch(sd1)
    patch = with_encoder_factors(sd1, own, fitted)
    assert patch.info.encoder_hash == sd1.family.identity.encoder_hash()
    names = apply_patches(sd1, [patch], strict=True)
    try:
        erased, kept = states(sd1, PROMPTS.erase), states(sd1, PROMPTS.preserve)
    finally:
        remove_patches(sd1, names)
    gap0, gap = (erased0 - target).square().mean(), (erased - target).square().mean()
    drift = (kept - kept0).square().mean()
    assert gap < 0.5 * gap0, (float(gap0), float(gap))
    assert drift < 0.25 * gap0, (float(drift), float(gap0))


def test_the_same_inputs_and_seed_give_the_same_factors_and_another_seed_others(sd1):
    one, two = fit_encoder(sd1, PROMPTS, FIT)["text_encoder"], fit_encoder(sd1, PROMPTS, FIT)["text_encoder"]
    assert all(torch.equal(one[m][0], two[m][0]) and torch.equal(one[m][1], two[m][1]) for m in one)
    other = fit_encoder(sd1, PROMPTS, EncoderFitConfig(steps=60, lr=1e-2, rank=2, seed=1))["text_encoder"]
    assert any(not torch.equal(one[m][0], other[m][0]) for m in one)


def test_layers_choose_how_many_of_the_last_layers_carry_factors_and_start_continues(sd1):
    both = fit_encoder(sd1, PROMPTS, EncoderFitConfig(steps=2, layers=2))
    assert {m.split(".")[3] for m in both["text_encoder"]} == {"0", "1"} and len(both["text_encoder"]) == 12
    more = fit_encoder(sd1, PROMPTS, EncoderFitConfig(steps=1, layers=2, lr=1e-9), start=both)["text_encoder"]
    for m, (a, b) in both["text_encoder"].items():  # one step at a tiny lr from `start`: where it started
        torch.testing.assert_close(more[m][1] @ more[m][0], b @ a, rtol=0, atol=1e-6)


def test_learned_tokens_may_stand_in_the_erase_prompts(sd1):
    width = sd1.pipe.text_encoder.get_input_embeddings().weight.shape[1]
    token = LearnedTokens("<adv-0>", torch.randn(1, width, generator=torch.Generator().manual_seed(0)), [])
    prompts = EncoderPrompts(("a photo of <adv-0>",), ("a photo of a person",), PROMPTS.preserve)
    factors = fit_encoder(sd1, prompts, FIT, [token])
    assert len(factors["text_encoder"]) == 6
    assert "<adv-0>" not in sd1.pipe.tokenizer.get_vocab()  # the tokenizer and table are put back


@pytest.mark.parametrize(
    "field,value",
    [("layers", 0), ("rank", -1), ("steps", 0), ("lr", 0.0), ("lr", float("nan")), ("batch_size", 0)],
)
def test_absurd_fit_settings_are_refused_in_one_line(field, value):
    with pytest.raises(FmnPatchError, match=field) as e:
        EncoderFitConfig(**{field: value})
    assert "\n" not in str(e.value)


def test_prompts_and_targets_must_pair_up():
    with pytest.raises(ValueError, match="one per prompt"):
        EncoderPrompts(("a",), (), ())


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_on_mmdit_the_fit_moves_the_pooled_vector_too_on_every_clip_and_leaves_t5_alone(kind, mmdit_dirs):
    """SD3 reads two CLIPs (states: next-to-last layer; pooled: the last) and T5; Flux one CLIP (pooled only) and
    T5. The fit changes every CLIP, moves the erased prompts' conditioning, pooled vector included, toward the
    anchors', leaves the base's weights (T5's included, with no gradient on them) and takes learned tokens."""
    base = load_base(str(mmdit_dirs[kind]))
    before = {
        f"{i}.{k}": v.clone()
        for i, e in enumerate(base.family.text.text_encoders())
        for k, v in e.state_dict().items()
    }
    clips = list(base.family.adapters.encoder_targets())
    width = base.family.text.token_table().shape[1]
    token = LearnedTokens("<adv-0>", torch.randn(1, width, generator=torch.Generator().manual_seed(0)), [])
    prompts = EncoderPrompts(
        (*PROMPTS.erase, "a photo of <adv-0>"), (*PROMPTS.targets, "a photo of a person"), PROMPTS.preserve
    )
    start = base.family.text.encode(list(PROMPTS.erase))
    target = base.family.text.encode(list(PROMPTS.targets))
    fitted = fit_encoder(base, prompts, EncoderFitConfig(steps=60, lr=1e-2, rank=2, layers=2), [token])
    assert sorted(fitted) == clips and all(len(f) == 12 for f in fitted.values())
    after = {
        f"{i}.{k}": v
        for i, e in enumerate(base.family.text.text_encoders())
        for k, v in e.state_dict().items()
    }
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for e in base.family.text.text_encoders() for p in e.parameters())
    patch = with_encoder_factors(base, random_patch(base, scale=0.0), fitted)
    names = apply_patches(base, [patch], strict=True)
    try:
        moved = base.family.text.encode(list(PROMPTS.erase))
    finally:
        remove_patches(base, names)
    for key in ("pooled",):
        gap0 = (start.added[key] - target.added[key]).square().mean()
        gap = (moved.added[key] - target.added[key]).square().mean()
        assert gap < 0.5 * gap0, (key, float(gap0), float(gap))
    assert "<adv-0>" not in base.family.text.tokenizer.get_vocab()


def test_sdxl_which_learns_no_tokens_refuses_the_fit_in_one_line(pipeline_dirs):
    with pytest.raises(FmnPatchError, match=r"text-encoder fit serves SD 1\.x/2\.x pipelines") as e:
        fit_encoder(load_base(str(pipeline_dirs["sdxl"])), PROMPTS, FIT)
    assert "\n" not in str(e.value)
