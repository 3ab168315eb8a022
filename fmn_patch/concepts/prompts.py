"""What a forgetting method works on: the concepts (resolved against a bench), each concept's prompts, the anchor
prompts they are redirected to, and the prompts whose keys/values must stay as they were. One source of truth
for every method: resolution, default anchors and the preserve set are defined here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import BenchError
from ..format.category import Category, category_of
from ..format.header import PatchConcept
from .bench import Bench, Concept

ConceptLike = str | Concept
#: Prompts that name a concept and no attribute of it, "{}" = the concept: what concept correction rewrites.
BARE_TEMPLATES: tuple[str, ...] = ("a {}", "a picture of a {}", "{}")


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


def parse_concept(text: str) -> tuple[str, tuple[str, ...]]:
    """``"circle=disc,round thing"`` -> ``("circle", ("disc", "round thing"))``: a name and its aliases."""
    name, _, aliases = text.partition("=")
    if not name.strip():
        raise BenchError(f"concept {text!r} has no name; write NAME or NAME=ALIAS,ALIAS (e.g. circle=disc)")
    return name.strip(), tuple(a.strip() for a in aliases.split(",") if a.strip())


def resolve(
    items: Iterable[ConceptLike],
    bench: Bench | None,
    categories: Sequence[str | None] | str | None = None,
) -> list[Concept]:
    """Concepts from names (``NAME`` or ``NAME=ALIAS,...``) or ``Concept``s. A name the bench knows (by name or
    alias) is its concept, with any aliases given added. A name it does not know needs a category: ``categories``
    is one for every such name, or one per item (an item's category that contradicts the bench is refused)."""
    items = list(items)
    per_item = not (categories is None or isinstance(categories, str))
    listed: list[str | None] = (
        [categories] * len(items) if isinstance(categories, str | None) else list(categories)
    )
    if len(listed) != len(items):
        raise BenchError(f"got {len(listed)} categories for {len(items)} concepts; give one, or one each")
    out: list[Concept] = []
    for item, category in zip(items, listed, strict=True):
        if isinstance(item, Concept):
            out.append(item)
            continue
        name, aliases = parse_concept(item)
        wanted: Category | None = category_of(category) if category else None
        known = bench.find(name) if bench is not None else None
        if known is not None:
            if per_item and wanted is not None and wanted != known.category:
                raise BenchError(
                    f"concept {name!r} is a {known.category} in ConceptBench {bench.name!r}, not a {wanted}; "  # type: ignore[union-attr]
                    "drop its --category, or give a bench without it"
                )
            out.append(dataclasses.replace(known, aliases=(*known.aliases, *aliases, name)))
        elif wanted is None:
            where = f"ConceptBench {bench.name!r}" if bench is not None else "any bench (none is used)"
            raise BenchError(
                f"concept {name!r} is not in {where}; give its category with --category identity|object|style|nsfw "
                "(category='object' in the library)"
            )
        else:
            out.append(Concept(name, wanted, aliases))
    return out


def anchor_for(concept: Concept, bench: Bench | None, anchor: str | Mapping[str, str] | None = None) -> str:
    """What ``concept`` is redirected to: its own anchor, else ``anchor`` (one for all, or by concept name), else
    the bench's neutral word for its category ("" without a bench)."""
    if concept.anchor is not None:
        return concept.anchor
    if isinstance(anchor, str):
        return anchor
    if anchor is not None and concept.name in anchor:
        return anchor[concept.name]
    return bench.anchor(concept.category) if bench is not None else ""


def plan(concept: Concept, bench: Bench, anchor: str | Mapping[str, str] | None = None) -> ConceptPlan:
    """The concept's bench prompts and the same prompts with the concept's name replaced by the anchor."""
    target = anchor_for(concept, bench, anchor)
    prompts = tuple(bench.prompts(concept))
    return ConceptPlan(concept, target, prompts, tuple(substitute(p, concept.name, target) for p in prompts))


def substitute(prompt: str, name: str, anchor: str) -> str:
    """``prompt`` with whole-word occurrences of ``name`` replaced by ``anchor`` (spaces tidied)."""
    out = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", lambda _: anchor, prompt)
    return re.sub(r"\s+", " ", out).strip()


def names_word(words: Iterable[str]) -> Callable[[str], bool]:
    """A test of whether a prompt names one of ``words`` as a whole word (the default naming test)."""
    patterns = [re.compile(rf"(?<!\w){re.escape(w)}(?!\w)") for w in words]
    return lambda prompt: any(p.search(prompt) for p in patterns)


def neighbour_prompts(bench: Bench | None, erased: Sequence[Concept]) -> list[str]:
    """The prompts, under each of their names, of the bench's other concepts that share a category with an erased
    concept: its neighbours, the kept concepts an edit is most likely to move with it."""
    if bench is None:
        return []
    gone = {c.name for c in erased}
    categories = {c.category for c in erased}
    return [
        p
        for kept in bench.concepts
        if kept.category in categories and kept.name not in gone
        for name in kept.names
        for p in bench.prompts(kept, name)
    ]


def split_neighbours(prompts: Iterable[str], near: Iterable[str]) -> tuple[list[str], list[str]]:
    """``prompts`` in two lists, order kept: those not in ``near``, and those in it (whose rows get a weight)."""
    close = set(near)
    both: tuple[list[str], list[str]] = ([], [])
    for p in prompts:
        both[p in close].append(p)
    return both


def preserve_prompts(
    bench: Bench | None,
    erased: Sequence[Concept],
    *,
    first: Iterable[str] = (),
    last: Iterable[str] = (),
    bench_concepts: bool = True,
    names: Callable[[str], bool] | None = None,
) -> list[str]:
    """Prompts whose keys/values must not move, in this order: the empty prompt (classifier-free guidance reads
    it), ``first``, every other bench concept's prompts under each of its names (unless ``bench_concepts`` is
    False), ``last``. Duplicates and prompts that name an erased concept (``names``: default, by whole word) are
    left out."""
    banned = [w for c in erased for w in c.names]
    naming = names or names_word(banned)
    erased_words = set(banned)

    def sources() -> Iterable[str]:
        yield ""
        yield from first
        if bench is not None and bench_concepts:
            for kept in bench.concepts:
                if erased_words.isdisjoint(kept.names):
                    for name in kept.names:
                        yield from bench.prompts(kept, name)
        yield from last

    return [p for p in dict.fromkeys(sources()) if not naming(p)]
