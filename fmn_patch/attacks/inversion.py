"""Concept Inversion (Pham et al., 2023, "Circumventing Concept Erasure Methods for Text-to-Image Generative
Models"): textual inversion of one new token on pictures of the concept drawn by the base, learned against the
patched model, then the bench's prompts with the token in place of the name."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import torch

from ..concepts.bench import Bench, Concept
from ..evaluation.judges import Judge
from ..evaluation.mscore import SamplerConfig
from ..families.base import Base, as_base
from ..methods.inversion import InversionConfig, LearnedTokens, learn_tokens
from .attack import Attack, AttackContext, AttackResult, judge_prompts, register_attack
from .config import InversionAttackConfig


def inversion_attack(
    base: Base | Any,
    concept: Concept,
    bench: Bench,
    judge: Judge,
    latents: torch.Tensor,
    config: InversionAttackConfig,
    sampler: SamplerConfig,
    seed: int = 0,
) -> tuple[AttackResult, LearnedTokens]:
    """Learn a new token on ``latents`` (N, C, h, w) against ``base`` as it is now (patched), then generate the
    bench's prompts with the token in place of the concept's name and judge them."""
    from .config import AttackConfig

    base = as_base(base)
    family = base.family
    family.require_one_encoder("the inversion attack")
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
    words = learned.token if family.expands_tokens else learned.words
    prompts = bench.prompts(concept, words)
    ctx = AttackContext(base, concept, bench, judge, latents, AttackConfig(sampler=sampler))
    with family.added_tokens(learned.names, learned.embeddings):
        acc, m, images = judge_prompts(ctx, prompts, "inversion")
    budget = {**dataclasses.asdict(config), "init_words": init, "template": template}
    budget["images"] = min(config.images, len(latents))
    details = {"token": learned.token, "final_loss": learned.losses[-1], "learn_seconds": learn_seconds}
    seconds = time.perf_counter() - started
    return AttackResult(
        "inversion", "", acc, m, len(images), seconds, prompts, budget, details, images
    ), learned


def _run(ctx: AttackContext) -> AttackResult:
    c = ctx.config
    return inversion_attack(
        ctx.base, ctx.concept, ctx.bench, ctx.judge, ctx.latents, c.inversion, c.sampler, c.seed
    )[0]


register_attack(
    Attack("inversion", _run, latents=lambda config: config.inversion.images, one_encoder=True, order=20)
)
