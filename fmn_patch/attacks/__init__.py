"""Layer 5, attacks on forgetting: the harness (``run_attacks``) and one module per registered attack
(``paraphrase``, ``inversion``: Concept Inversion, ``search``: a prompt search)."""

from . import inversion, paraphrase, search  # register the built-in attacks
from .attack import (
    DIRECT,
    Attack,
    AttackContext,
    AttackPlan,
    AttackResult,
    judge_plans,
    register_attack,
)
from .config import AttackConfig, InversionAttackConfig, SearchConfig, attack_names
from .harness import patched, reference_latents, run_attacks
from .inversion import inversion_attack, inversion_plan
from .report import AttackReport, attack_grid
from .search import SearchResult, search_attack, search_prompt

__all__ = [
    "ATTACKS",
    "DIRECT",
    "Attack",
    "AttackConfig",
    "AttackContext",
    "AttackPlan",
    "AttackReport",
    "AttackResult",
    "InversionAttackConfig",
    "SearchConfig",
    "SearchResult",
    "attack_grid",
    "attack_names",
    "inversion",
    "inversion_attack",
    "inversion_plan",
    "judge_plans",
    "paraphrase",
    "patched",
    "reference_latents",
    "register_attack",
    "run_attacks",
    "search",
    "search_attack",
    "search_prompt",
]


def __getattr__(name: str) -> object:
    """``ATTACKS``: the registered attack names when asked (an attack registered later is among them)."""
    if name == "ATTACKS":
        return tuple(attack_names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
