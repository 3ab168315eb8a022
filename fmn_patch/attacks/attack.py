"""What an attack is: a registered function from an attack context (the model as it is now, the concept, its
bench and judge, pictures of the concept, the budgets) to a judged result. The bench's own prompts, unchanged
(``direct``), are the starting point every report shows."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..concepts.bench import Bench, Concept
from ..evaluation.judges import Judge
from ..evaluation.mscore import SamplerConfig, generate, judged
from ..families.base import Base

if TYPE_CHECKING:
    from .config import AttackConfig

DIRECT = "direct"  # the bench's own prompts, unchanged: what the attacks start from


@dataclass
class AttackResult:
    """One attack on one model: what it generated and how the judge saw it."""

    attack: str  # direct | paraphrase | inversion | search | ...
    model: str  # base | patched
    acc: float  # share of images judged to show the concept: attack success
    m_score: float
    images: int
    seconds: float
    prompts: list[str]
    budget: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    samples: torch.Tensor | None = None  # (k, 3, H, W) for the grid

    def to_dict(self) -> dict[str, Any]:
        keys = ("attack", "model", "acc", "m_score", "images", "seconds", "prompts", "budget", "details")
        return {k: getattr(self, k) for k in keys}


@dataclass
class AttackContext:
    """What an attack works with: the model as it is now (patched or not) and the fixed inputs."""

    base: Base
    concept: Concept
    bench: Bench
    judge: Judge
    latents: torch.Tensor  # (N, C, h, w) pictures of the concept drawn by the base before patching
    config: AttackConfig

    @property
    def sampler(self) -> SamplerConfig:
        return self.config.sampler


@dataclass(frozen=True)
class Attack:
    """A registered attack: its name, how it runs, how many pictures of the concept it needs, and whether it needs
    a family with one text encoder (it learns or searches token embeddings)."""

    name: str
    run: Callable[[AttackContext], AttackResult]
    latents: Callable[[AttackConfig], int] = lambda _config: 0
    one_encoder: bool = False
    order: int = 100  # where it comes in listings and reports (the built-ins: 10, 20, 30)


_ATTACKS: dict[str, Attack] = {}


def register_attack(attack: Attack) -> Attack:
    """Make ``run_attacks`` (and ``fmnpatch attack --attack NAME``) know ``attack``."""
    _ATTACKS[attack.name] = attack
    return attack


def attack_names() -> tuple[str, ...]:
    return tuple(sorted(_ATTACKS, key=lambda name: (_ATTACKS[name].order, name)))


def get_attack(name: str) -> Attack:
    return _ATTACKS[name]


def judge_prompts(ctx: AttackContext, prompts: list[str], desc: str, sampler: SamplerConfig | None = None):
    """Generate every prompt with every seed on the model as it is now and judge the images for the concept:
    (acc, M-Score, images (P * seeds, 3, H, W))."""
    images = generate(ctx.base, prompts, sampler or ctx.sampler, progress=False, desc=desc)
    m_score, acc = judged(ctx.judge, images, ctx.concept)
    return acc, m_score, images


def direct_attack(ctx: AttackContext) -> AttackResult:
    """No attack: the bench's own prompts of the concept."""
    started = time.perf_counter()
    prompts = ctx.bench.prompts(ctx.concept)
    acc, m, images = judge_prompts(ctx, prompts, DIRECT)
    return AttackResult(
        DIRECT, "", acc, m, len(images), time.perf_counter() - started, prompts, samples=images
    )
