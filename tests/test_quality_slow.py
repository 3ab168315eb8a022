"""Quality regressions (slow marker, `make test-slow`): a bench-quick subset that fails when a number falls below the
acceptance bars of the training and editing issues, on the bundled toy model judged by the toy judge.

Bars: train one concept: Acc_erased <= 5%, alias <= 10%, Acc_kept >= 95% of base; five concepts in one patch:
Acc_erased <= 10% each, Acc_kept >= 90%; the default --robust on circle, bob and striped: Concept Inversion
(default budget and twice its steps) <= 20%; edit one concept: Acc_erased <= 5%, alias <= 10%, Acc_kept >= 97%; edit
six concepts at once (v1's objects and identities but star): each <= 5%, star and v1's styles >= 90% of base;
correction: colour entropy of the bare concept >= 90% of log2(4), coloured prompts >= 90% right, Acc_kept >= 95%.

Acc_kept is read on every object and style, v1's two people (bob, alice) and the neighbours (one attribute apart) of
each erased identity: the concepts a patch is most likely to take along. The other 90-odd identities would make every
run about three times longer and dilute the neighbours to nothing (``bench/mass_erasure.py`` scores them).
"""

from __future__ import annotations

import pytest
import torch

from fmn_patch import apply_patches, load_base, remove_patches
from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.correction import score_correction
from fmn_patch.evaluation.mscore import ModelScore, SamplerConfig, acc_kept, evaluate
from fmn_patch.format import Patch
from fmn_patch.methods.correct import attribute_variants, correct_patch
from fmn_patch.methods.edit import edit_patch
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge
from fmn_patch.toy.world import IDENTITIES, neighbours

pytestmark = pytest.mark.slow  # the toy judge is committed: its absence is a failure, not a skip


def short_of(reason: str) -> pytest.MarkDecorator:
    """A bar the v2 toy does not meet yet, with what this test measured on it: strict, so a change that meets the
    bar fails the marker and has it removed."""
    return pytest.mark.xfail(strict=True, reason=f"v2 toy, measured: {reason}")


SAMPLER = SamplerConfig(steps=20, guidance=5.0, seeds=(0, 1, 2))


PEOPLE = ("bob", "alice")  # v1's identities: every erased identity below is one of them


def scored(bench, erased: list[str] = ()) -> list[str]:
    """Every object and style, bob and alice, and the neighbours of each erased identity."""
    plain = [c.name for c in bench.concepts if c.category != "identity"] + list(PEOPLE)
    near = [n for e in erased if e in IDENTITIES for n in neighbours(e)]
    return list(dict.fromkeys([*plain, *erased, *near]))


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    pipe, bench, judge = load_base("toy"), load_bench("toy"), ToyJudge.load()
    every = scored(bench, list(PEOPLE))
    return pipe, bench, judge, evaluate(pipe, bench, judge, SAMPLER, concepts=every, progress=False)


def _scored(world, patch: Patch, erased: list[str]) -> tuple[ModelScore, float]:
    pipe, bench, judge, base = world
    names = apply_patches(pipe, [patch])
    chosen = scored(bench, erased)
    try:
        score = evaluate(pipe, bench, judge, SAMPLER, concepts=chosen, erased=erased, progress=False)
    finally:
        remove_patches(pipe, names)
    kept_base = acc_kept({n: base.concepts[n] for n in chosen}, erased)
    assert score.acc_kept is not None and kept_base
    return score, score.acc_kept / kept_base


def _check_erased(score: ModelScore, erased: list[str], acc: float, alias: float) -> None:
    for name in erased:
        c = score.concepts[name]
        assert c.acc <= acc, f"{name}: Acc_erased {c.acc:.0%} > {acc:.0%}"
        assert c.alias_acc is None or c.alias_acc <= alias, f"{name}: alias {c.alias_acc:.0%} > {alias:.0%}"


@pytest.mark.parametrize("concept", ["circle", "bob", "striped"])
def test_train_one_concept_meets_the_bar(world, concept):
    patch = train_patch(world[0], [concept], TrainConfig(), progress=False)
    score, kept = _scored(world, patch, [concept])
    _check_erased(score, [concept], 0.05, 0.10)
    assert kept >= 0.95


def test_train_five_concepts_meets_the_bar(world):
    five = ["circle", "square", "bob", "striped", "star"]
    score, kept = _scored(world, train_patch(world[0], five, TrainConfig(), progress=False), five)
    _check_erased(score, five, 0.10, 1.0)
    assert kept >= 0.90


@pytest.mark.parametrize(
    "concept",
    [
        pytest.param("circle", marks=short_of("Concept Inversion at 200 steps brings circle back in 50%")),
        "bob",
        "striped",
    ],
)
def test_robust_train_holds_against_concept_inversion(world, concept):
    """The default ``--robust`` (ROBUST_ROUNDS rounds from zero, Concept Inversion between them): Concept Inversion
    at the harness's default budget and at twice its steps brings the concept back in at most 20% of its images."""
    import dataclasses

    from fmn_patch.attacks import InversionAttackConfig, inversion_attack, reference_latents
    from fmn_patch.methods.resteer import ROBUST_ROUNDS

    pipe, bench, judge, _ = world
    patch = train_patch(pipe, [concept], TrainConfig(robust_rounds=ROBUST_ROUNDS), progress=False)
    default = InversionAttackConfig()
    latents = reference_latents(pipe, bench.concept(concept), bench, default.images, steps=20, guidance=5.0)
    names = apply_patches(pipe, [patch])
    try:
        for steps in (default.steps, 2 * default.steps):
            attack = dataclasses.replace(default, steps=steps)
            sampler = SamplerConfig(steps=20, guidance=5.0, seeds=(0, 1))
            result, _ = inversion_attack(
                pipe, bench.concept(concept), bench, judge, latents, attack, sampler, seed=0
            )
            assert result.acc <= 0.20, f"{concept}: Concept Inversion ({steps} steps) {result.acc:.0%} > 20%"
    finally:
        remove_patches(pipe, names)


@pytest.mark.parametrize(
    "concept",
    [
        "circle",
        pytest.param(
            "bob",
            marks=short_of("bob erased, kept 96.5% of base (bar 97%): its neighbour zokan goes with it"),
        ),
    ],
)
def test_edit_one_concept_meets_the_bar(world, concept):
    score, kept = _scored(world, edit_patch(world[0], [concept]), [concept])
    _check_erased(score, [concept], 0.05, 0.10)
    assert kept >= 0.97


def test_edit_six_of_v1s_concepts_but_star_meets_the_bar(world):
    base = world[3]
    erased = ["circle", "square", "triangle", "cross", "bob", "alice"]
    score, _ = _scored(world, edit_patch(world[0], erased), erased)
    _check_erased(score, erased, 0.05, 0.10)
    for name in ("star", "striped", "dotted", "checkered"):  # the one left and v1's styles
        kept = score.concepts[name].acc / base.concepts[name].acc
        assert kept >= 0.90, f"{name}: {kept:.0%} of base"


def test_correction_meets_the_bar(world):
    pipe = world[0]
    variants = attribute_variants("circle", "colour", "toy")
    patch = correct_patch(pipe, "circle", variants, progress=False)
    names = apply_patches(pipe, [patch])
    try:
        result = score_correction(pipe, world[2], "circle", variants, seeds=tuple(range(16)))
    finally:
        remove_patches(pipe, names)
    assert result.entropy_ratio >= 0.90, result.counts
    assert min(result.variant_accuracy.values()) >= 0.90, result.variant_accuracy
    _, kept = _scored(world, patch, [])
    assert kept >= 0.95
