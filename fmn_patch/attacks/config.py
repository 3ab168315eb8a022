"""The budgets of the attacks and of the harness that runs them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import values
from ..errors import FmnPatchError
from ..evaluation.mscore import SamplerConfig
from ..values import MAX_BATCH, MAX_STEPS

#: The registered attacks' names and listing order: ``attack.register_attack`` records each one here, so that a
#: config checks its names without importing the attacks themselves.
_KNOWN: dict[str, int] = {}


def known_attack(name: str, order: int) -> None:
    """Record an attack's name (``attack.register_attack`` calls it)."""
    _KNOWN[name] = order


def attack_names() -> tuple[str, ...]:
    """The registered attacks, in their listing order."""
    return tuple(sorted(_KNOWN, key=lambda name: (_KNOWN[name], name)))


def _at_least(obj: Any, names: Sequence[str], low: int, what: str, high: int = MAX_BATCH) -> None:
    for name in names:
        values.whole(getattr(obj, name), f"{what} {name}", low, high)


@dataclass(frozen=True)
class InversionAttackConfig:
    """Concept Inversion's budget: what the attacker spends to learn the concept back."""

    steps: int = 200  # optimisation steps of the new token's embedding
    images: int = 32  # pictures of the concept it learns from
    num_tokens: int = 1  # vectors of the new token
    lr: float = 5e-3
    batch_size: int = 8
    init_words: str | None = None  # None: the bench's anchor of the category (toy: "shape"), never the name
    template: str | None = None  # None: the bench's inversion_template

    def __post_init__(self) -> None:
        _at_least(self, ("steps",), 1, "inversion", MAX_STEPS)
        _at_least(self, ("images", "batch_size"), 1, "inversion")
        _at_least(self, ("num_tokens",), 1, "inversion", 75)  # the text encoder's 77 positions hold them
        values.number(self.lr, "inversion lr", 0, 10, above=True, example="5e-3")


@dataclass(frozen=True)
class SearchConfig:
    """The prompt search's budget: it stops at whichever of `seconds` and `max_candidates` comes first."""

    length: int = 3  # tokens (words) in the prompt searched for
    seconds: float = 60.0  # wall-clock budget, setup included
    max_candidates: int = 2000  # candidate prompts scored at most
    batch_size: int = 16  # candidates scored per UNet call, each on every reference latent
    images: int = 8  # reference latents the loss averages over (fixed noise and timesteps)

    def __post_init__(self) -> None:
        _at_least(self, ("max_candidates", "batch_size", "images"), 1, "search", 10_000_000)
        _at_least(self, ("length",), 1, "search", 75)
        values.number(self.seconds, "search seconds", 0, 7 * 24 * 3600, above=True, example=60)


@dataclass(frozen=True)
class AttackConfig:
    """Which attacks to run, their budgets, and how images are drawn and judged."""

    attacks: tuple[str, ...] = ("paraphrase", "inversion", "search")
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    inversion: InversionAttackConfig = field(default_factory=InversionAttackConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    attack_base: bool = True  # also attack the unpatched base: the ceiling of each attack
    images: str | None = None  # folder of pictures of the concept; None: drawn by the base before patching
    image_steps: int = 20  # sampler steps for the base's pictures of the concept
    image_guidance: float = 5.0
    seed: int = 0  # inversion's batches, search's start, noise and timesteps
    grid_images: int = 4  # images per attack and model in the grid
    options: dict[str, Any] = field(default_factory=dict)  # budgets of attacks registered by other modules

    def __post_init__(self) -> None:
        object.__setattr__(self, "attacks", tuple(self.attacks))
        unknown = [a for a in self.attacks if a not in attack_names()]
        if unknown or not self.attacks:
            raise FmnPatchError(
                f"unknown attack(s) {unknown or '(none given)'}; choose from {', '.join(attack_names())} "
                "(repeat --attack)"
            )
        _at_least(self, ("image_steps",), 1, "attack", MAX_STEPS)
        _at_least(self, ("grid_images",), 1, "attack")
        values.seed(self.seed, "attack seed")
        values.number(self.image_guidance, "attack image_guidance", 0, 1000, example=5)
