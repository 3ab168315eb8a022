"""Layer 5, attacks on forgetting: the harness (``run_attacks``) and one module per registered attack
(``paraphrase``, ``inversion``: Concept Inversion, ``search``: a prompt search)."""

from . import inversion, paraphrase, search  # register the built-in attacks
from .attack import DIRECT, Attack, AttackContext, AttackResult, attack_names, register_attack
from .config import AttackConfig, InversionAttackConfig, SearchConfig
from .harness import patched, reference_latents, run_attacks
from .inversion import inversion_attack
from .report import AttackReport, attack_grid
from .search import SearchResult, search_prompt

ATTACKS = attack_names()

__all__ = [
    "ATTACKS",
    "DIRECT",
    "Attack",
    "AttackConfig",
    "AttackContext",
    "AttackReport",
    "AttackResult",
    "InversionAttackConfig",
    "SearchConfig",
    "SearchResult",
    "attack_grid",
    "attack_names",
    "inversion",
    "inversion_attack",
    "paraphrase",
    "patched",
    "reference_latents",
    "register_attack",
    "run_attacks",
    "search",
    "search_prompt",
]
