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
from fmn_patch.format import Patch
from fmn_patch.methods.encoder import COMPONENT, EncoderFitConfig, EncoderPrompts, fit_encoder
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
    factors = fit_encoder(sd1, PROMPTS, FIT)
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
    names = apply_patches(sd1, [Patch(own.factors, own.info, own.component, {COMPONENT: factors})])
    try:
        erased, kept = states(sd1, PROMPTS.erase), states(sd1, PROMPTS.preserve)
    finally:
        remove_patches(sd1, names)
    gap0, gap = (erased0 - target).square().mean(), (erased - target).square().mean()
    drift = (kept - kept0).square().mean()
    assert gap < 0.5 * gap0, (float(gap0), float(gap))
    assert drift < 0.25 * gap0, (float(drift), float(gap0))


def test_the_same_inputs_and_seed_give_the_same_factors_and_another_seed_others(sd1):
    one, two = fit_encoder(sd1, PROMPTS, FIT), fit_encoder(sd1, PROMPTS, FIT)
    assert all(torch.equal(one[m][0], two[m][0]) and torch.equal(one[m][1], two[m][1]) for m in one)
    other = fit_encoder(sd1, PROMPTS, EncoderFitConfig(steps=60, lr=1e-2, rank=2, seed=1))
    assert any(not torch.equal(one[m][0], other[m][0]) for m in one)


def test_layers_choose_how_many_of_the_last_layers_carry_factors_and_start_continues(sd1):
    both = fit_encoder(sd1, PROMPTS, EncoderFitConfig(steps=2, layers=2))
    assert {m.split(".")[3] for m in both} == {"0", "1"} and len(both) == 12
    more = fit_encoder(sd1, PROMPTS, EncoderFitConfig(steps=1, layers=2, lr=1e-9), start=both)
    for m, (a, b) in both.items():  # one step at a tiny lr from `start`: where it started
        torch.testing.assert_close(more[m][1] @ more[m][0], b @ a, rtol=0, atol=1e-6)


def test_learned_tokens_may_stand_in_the_erase_prompts(sd1):
    width = sd1.pipe.text_encoder.get_input_embeddings().weight.shape[1]
    token = LearnedTokens("<adv-0>", torch.randn(1, width, generator=torch.Generator().manual_seed(0)), [])
    prompts = EncoderPrompts(("a photo of <adv-0>",), ("a photo of a person",), PROMPTS.preserve)
    factors = fit_encoder(sd1, prompts, FIT, [token])
    assert len(factors) == 6
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


def test_families_without_one_encoder_refuse_the_fit_in_one_line(mmdit_dirs, pipeline_dirs):
    base = load_base(str(mmdit_dirs["sd3"]))
    with pytest.raises(
        FmnPatchError, match=r"serves SD 1\.x/2\.x bases \(one CLIP encoder\), not the sd3 family"
    ):
        fit_encoder(base, PROMPTS, FIT)
    with pytest.raises(FmnPatchError, match=r"text-encoder fit serves SD 1\.x/2\.x pipelines"):
        fit_encoder(load_base(str(pipeline_dirs["sdxl"])), PROMPTS, FIT)
