"""Concept Inversion (Pham et al., 2023, "Circumventing Concept Erasure Methods for Text-to-Image Generative
Models"): textual inversion of one new token on pictures of the concept drawn by the base, learned against the
patched model, then the bench's prompts with the token in place of the name."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time

import torch

from ..concepts.bench import Bench, Concept
from ..evaluation.judges import Judge
from ..evaluation.mscore import SamplerConfig
from ..families.base import Base, BaseLike, as_base
from ..methods.inversion import InversionConfig, LearnedTokens, learn_tokens
from .attack import Attack, AttackContext, AttackPlan, AttackResult, judge_plans, register_attack
from .config import InversionAttackConfig


def inversion_plan(
    base: Base,
    concept: Concept,
    bench: Bench,
    latents: torch.Tensor,
    config: InversionAttackConfig,
    seed: int = 0,
) -> AttackPlan:
    """Learn a new token on ``latents`` (N, C, h, w) against ``base`` as it is now (patched): the plan is the
    bench's prompts with the token in place of the concept's name, drawn with the token added."""
    family = base.family
    family.text.require_one_encoder("the inversion attack")
    started = time.perf_counter()
    token = "<attack-" + re.sub(r"[^a-z0-9]+", "-", concept.name.lower()).strip("-") + ">"
    init = config.init_words if config.init_words is not None else bench.anchor(concept.category)
    template = config.template or bench.inversion_template
    inversion = InversionConfig(
        num_tokens=config.num_tokens,
        steps=config.steps,
        lr=config.lr,
        batch_size=config.batch_size,
        template=template,
        seed=seed,
    )
    learned = learn_tokens(base, latents[: config.images], token, init, inversion, progress=False)
    learn_seconds = time.perf_counter() - started
    # a pipeline whose prompt conversion expands a multi-vector token (`<t>` -> `<t> <t>_1 ...`) gets `<t>` alone
    words = learned.token if family.text.expands_tokens else learned.words
    budget = {**dataclasses.asdict(config), "init_words": init, "template": template}
    budget["images"] = min(config.images, len(latents))
    details = {"token": learned.token, "final_loss": learned.losses[-1], "learn_seconds": learn_seconds}
    return AttackPlan(bench.prompts(concept, words), budget, details, learn_seconds, tokens=learned)


def inversion_attack(
    base: BaseLike,
    concept: Concept,
    bench: Bench,
    judge: Judge,
    latents: torch.Tensor,
    config: InversionAttackConfig,
    sampler: SamplerConfig,
    seed: int = 0,
) -> tuple[AttackResult, LearnedTokens]:
    """``inversion_plan``, then its prompts drawn with ``sampler`` on ``base`` as it is now and judged."""
    from .config import AttackConfig

    base = as_base(base)
    plan = inversion_plan(base, concept, bench, latents, config, seed)
    states = {"": contextlib.nullcontext}
    [result] = judge_plans(
        base, [("", "inversion", plan)], concept, judge, AttackConfig(sampler=sampler), states, progress=False
    )
    assert plan.tokens is not None
    return result, plan.tokens


def _run(ctx: AttackContext) -> AttackPlan:
    c = ctx.config
    return inversion_plan(ctx.base, ctx.concept, ctx.bench, ctx.latents, c.inversion, c.seed)


register_attack(
    Attack("inversion", _run, latents=lambda config: config.inversion.images, one_encoder=True, order=20)
)
