"""What a forgetting method trains on: each concept's prompts, the anchor prompts they are redirected to, and the
prompts whose keys/values must stay as they were.

Concepts known to a ConceptBench take their category, aliases and templates from it; others need a category and
use the category's templates of the bench in use (``real`` for real checkpoints).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .conceptbench import Bench, Concept
from .errors import FmnPatchError
from .patch import CATEGORY_SHORTHANDS, PatchConcept

# The neutral word a category's concepts are redirected to when no anchor is given; the toy world's captions use
# "shape" and "person" for exactly this, "plain" is its neutral fill.
DEFAULT_ANCHORS: dict[str, dict[str, str]] = {
    "toy": {"object": "shape", "identity": "person", "style": "plain"},
    "real": {"object": "object", "identity": "a person", "style": "a painter"},
}


@dataclass(frozen=True)
class ConceptPlan:
    """One concept to forget: the prompts that name it and, position for position, the anchor prompts."""

    concept: Concept
    anchor: str
    prompts: tuple[str, ...]
    anchor_prompts: tuple[str, ...]

    @property
    def record(self) -> PatchConcept:
        return PatchConcept(self.concept.name, self.concept.category)


def resolve(name: str, bench: Bench, category: str | None = None) -> Concept:
    """The bench's concept called ``name`` (or with that alias), else a new concept of ``category``."""
    category = CATEGORY_SHORTHANDS.get(category, category) if category else None
    try:
        known = bench.concept(name)
    except KeyError:
        known = None
    if known is not None and (category is None or category == known.category):
        return known
    if category is None:
        raise FmnPatchError(
            f"concept {name!r} is not in ConceptBench {bench.name!r}; give its category with --category "
            "identity|object|style"
        )
    if category not in bench.templates:
        raise FmnPatchError(
            f"bench {bench.name!r} has no prompt templates for category {category!r}; use one of "
            f"{', '.join(sorted(bench.templates))}"
        )
    return Concept(name, category)  # type: ignore[arg-type]


def plan(concept: Concept, bench: Bench, anchor: str | None = None) -> ConceptPlan:
    """The concept's bench prompts and the same prompts with the concept's name replaced by the anchor."""
    if anchor is None:
        anchor = DEFAULT_ANCHORS.get(bench.name, DEFAULT_ANCHORS["real"]).get(concept.category, "")
    prompts = tuple(bench.prompts(concept))
    return ConceptPlan(concept, anchor, prompts, tuple(substitute(p, concept.name, anchor) for p in prompts))


def substitute(prompt: str, name: str, anchor: str) -> str:
    """``prompt`` with whole-word occurrences of ``name`` replaced by ``anchor`` (spaces tidied)."""
    out = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", anchor, prompt)
    return re.sub(r"\s+", " ", out).strip()


def preserve_prompts(bench: Bench, erased: Sequence[Concept], extra: Sequence[str] = ()) -> list[str]:
    """Prompts whose keys/values must not move: every other concept's prompts (with aliases), the empty prompt
    (classifier-free guidance reads it), and ``extra``. Prompts naming an erased concept or alias are left out."""
    banned = {w for c in erased for w in (c.name, *c.aliases)}
    out: list[str] = [""]
    for concept in bench.concepts:
        if concept in erased:
            continue
        for name in (concept.name, *concept.aliases):
            out += bench.prompts(concept, name)
    out += list(extra)
    keep = [
        p
        for p in dict.fromkeys(out)
        if not any(re.search(rf"(?<!\w){re.escape(b)}(?!\w)", p) for b in banned)
    ]
    return keep
