"""What an attack is: a registered function from an attack context (the model as it is now, the concept, its
bench and judge, pictures of the concept, the budgets) to a plan: the prompts it found (with any tokens it
learned) and what it spent. The harness draws and judges every plan's prompts, shared between the processes of
``accelerate launch``. The bench's own prompts, unchanged (``direct``), are the starting point every report shows."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..concepts.bench import Bench, Concept
from ..evaluation.batches import ImageBatch, ImageJob, States, batches, mean_scores, run_batches
from ..evaluation.judges import Judge
from ..evaluation.mscore import SamplerConfig
from ..families.base import Base
from ..methods.inversion import LearnedTokens
from .config import AttackConfig, known_attack

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
    samples: torch.Tensor | None = None  # (k, 3, H, W): the first images, for the grid

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


@dataclass
class AttackPlan:
    """What an attack found on the model as it is now: the prompts to draw and judge, tokens it learned (added to
    the pipeline while they are drawn), what it spent (budget, details) and how long finding them took."""

    prompts: list[str]
    budget: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    sampler: SamplerConfig | None = None  # None: the attack config's sampler
    tokens: LearnedTokens | None = None


@dataclass(frozen=True)
class Attack:
    """A registered attack: its name, how it runs, how many pictures of the concept it needs, and whether it needs
    a family with one text encoder (it learns or searches token embeddings)."""

    name: str
    run: Callable[[AttackContext], AttackPlan]
    latents: Callable[[AttackConfig], int] = lambda _config: 0
    one_encoder: bool = False
    order: int = 100  # where it comes in listings and reports (the built-ins: 10, 20, 30)


_ATTACKS: dict[str, Attack] = {}


def register_attack(attack: Attack) -> Attack:
    """Make ``run_attacks`` (and ``fmnpatch attack --attack NAME``) know ``attack``."""
    _ATTACKS[attack.name] = attack
    known_attack(attack.name, attack.order)
    return attack


def get_attack(name: str) -> Attack:
    return _ATTACKS[name]


def direct_attack(ctx: AttackContext) -> AttackPlan:
    """No attack: the bench's own prompts of the concept."""
    return AttackPlan(ctx.bench.prompts(ctx.concept))


def judge_plans(
    base: Base,
    plans: Sequence[tuple[str, str, AttackPlan]],
    concept: Concept,
    judge: Judge,
    config: AttackConfig,
    states: States,
    *,
    progress: bool = True,
) -> list[AttackResult]:
    """Draw every (model, attack, plan)'s prompts with every seed of its sampler on that model (``states[model]``,
    plus the plan's learned tokens), judge them for ``concept``: one result each, in order. The batches are shared
    between the job's processes (a collective call); the results are the same whatever their number."""
    every: dict[str, Callable[[], AbstractContextManager[Any]]] = dict(states)
    work: list[ImageBatch] = []
    owner: list[int] = []
    for k, (model, attack, plan) in enumerate(plans):
        key = model
        if plan.tokens is not None:
            key = f"{model} with the {attack} tokens"
            every[key] = functools.partial(_with_tokens, base, states[model], plan.tokens)
        sampler = plan.sampler or config.sampler
        pairs = [(p, s) for p in plan.prompts for s in sampler.seeds]
        jobs = [ImageJob(p, s, concept, keep=i < config.grid_images) for i, (p, s) in enumerate(pairs)]
        mine = batches(key, jobs, sampler.steps, sampler.guidance, sampler.batch_size)
        work += mine
        owner += [k] * len(mine)
    drawn, _ = run_batches(base, work, judge, every, progress=progress, what=f"attacks on {concept.name}")
    results = []
    for k, (model, attack, plan) in enumerate(plans):
        mine_results = [r for r, o in zip(drawn, owner, strict=True) if o == k]
        probs = [p for r in mine_results for p in r.probs]
        m_score, acc = mean_scores(probs, [h for r in mine_results for h in r.hits])
        kept = [r.images for r in mine_results if r.images is not None]
        seconds = plan.seconds + sum(r.seconds for r in mine_results)
        samples = torch.cat(kept) if kept else None
        results.append(
            AttackResult(
                attack,
                model,
                acc,
                m_score,
                len(probs),
                seconds,
                plan.prompts,
                plan.budget,
                plan.details,
                samples,
            )
        )
    return results


@contextlib.contextmanager
def _with_tokens(
    base: Base, state: Callable[[], AbstractContextManager[Any]], tokens: LearnedTokens
) -> Iterator[None]:
    with state(), base.family.text.added_tokens(tokens.names, tokens.embeddings):
        yield
