"""The paraphrase attack: the concept's name and aliases in word orders the training never saw (the bench's
``paraphrases`` templates, over its attribute values)."""

from __future__ import annotations

import time

from .attack import Attack, AttackContext, AttackResult, judge_prompts, register_attack


def paraphrase_attack(ctx: AttackContext) -> AttackResult:
    """Generate and judge the bench's paraphrase prompts of the concept."""
    started = time.perf_counter()
    prompts = ctx.bench.paraphrase_prompts(ctx.concept)
    acc, m, images = judge_prompts(ctx, prompts, "paraphrase")
    budget = {"prompts": len(prompts), "names": len(ctx.concept.names)}
    return AttackResult(
        "paraphrase", "", acc, m, len(images), time.perf_counter() - started, prompts, budget, {}, images
    )


register_attack(Attack("paraphrase", paraphrase_attack, order=10))
