"""The paraphrase attack: the concept's name and aliases in word orders the training never saw (the bench's
``paraphrases`` templates, over its attribute values)."""

from __future__ import annotations

from .attack import Attack, AttackContext, AttackPlan, register_attack


def paraphrase_attack(ctx: AttackContext) -> AttackPlan:
    """The bench's paraphrase prompts of the concept."""
    prompts = ctx.bench.paraphrase_prompts(ctx.concept)
    return AttackPlan(prompts, budget={"prompts": len(prompts), "names": len(ctx.concept.names)})


register_attack(Attack("paraphrase", paraphrase_attack, order=10))
