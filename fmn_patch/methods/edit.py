"""Closed-form, data-free forgetting: re-map a concept's text keys/values onto an anchor's, as a LoRA patch.

For every erased concept (and each alias) the concept is written into its templates (its own, else its category's
in the bench: "a red circle", "a picture of a red circle", ...) and into the same prompts with the anchor ("a red
shape"). The text encoder's states at the concept's tokens AND every later position (through its causal attention
the concept lives in all of them: the rest of the prompt, EOS and the padding) are asked to give the keys/values of
the aligned anchor states, pushed ``push`` further away from the concept (t = a + push (a - c), a negative-guidance
step in key/value space). A preserve set (the anchors' prompts, the bench's other concepts, the model's most
frequent vocabulary words, the empty prompt, a user file) keeps its keys/values. ``editor`` streams the prompts
into one ridge solve shared by all layers and factors each layer's delta.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from ..concepts.bench import Bench, Concept, load_bench
from ..concepts.prompts import (
    ConceptLike,
    anchor_for,
    neighbour_prompts,
    preserve_prompts,
    resolve,
    split_neighbours,
)
from ..concepts.templates import fill
from ..errors import FmnPatchError
from ..families.base import Base
from ..families.family import Family
from ..families.threads import sized_threads
from ..families.tokens import find_subsequence
from ..format.header import PatchConcept, PatchInfo
from ..format.patch import Patch
from ..progress import phase
from .editor import ERASE_DEFAULT, EditConfig, Editor, EditReport, erase_weight_of

METHOD: Final = "edit"  # the header's method of an edit patch

#: Templates for concepts whose category the bench has none for (and for ``bench="none"``).
FALLBACK_TEMPLATES: tuple[str, ...] = ("a photo of {name}", "an image of {name}", "a picture of {name}")

__all__ = [
    "FACTORING",
    "FALLBACK_TEMPLATES",
    "EditConfig",
    "EditReport",
    "edit_patch",
    "edit_patches",
    "erase_prompts",
    "templates",
]


def templates(concept: Concept, bench: Bench | None) -> list[str]:
    """The bare ``{name}`` and the concept's templates (attribute slots filled, ``{name}`` open): its own, else
    its category's in the bench, else ``FALLBACK_TEMPLATES``."""
    if concept.templates:
        return list(dict.fromkeys(("{name}", *concept.templates)))
    if bench is None or concept.category not in bench.templates:
        return ["{name}", *FALLBACK_TEMPLATES]
    return ["{name}", *bench.templates_for(concept)]


def erase_prompts(concept: Concept, anchor: str, bench: Bench | None) -> Iterator[tuple[str, str, str]]:
    """(prompt, concept words in it, the same prompt with the anchor) for each name of the concept and template."""
    for name in concept.names:
        for t in templates(concept, bench):
            yield fill(t, name), name, " ".join(fill(t, anchor).split())


@sized_threads
def edit_patch(
    base: Base,
    erase: Sequence[ConceptLike],
    anchor: str | Mapping[str, str] | None = None,
    preserve: Sequence[str] = (),
    config: EditConfig | None = None,
    category: str | None = None,
) -> Patch:
    """A patch that makes ``base`` forget the ``erase`` concepts, computed in closed form without images.

    ``erase``: names (``"circle"``, ``"circle=disc"`` with aliases) or ``Concept``s; names the ConceptBench knows
    get its category and aliases, others need ``category``. ``anchor``: what the concepts become (one text for all,
    or per concept name); default: each concept's own, else the bench's anchor of its category. ``preserve``: extra
    prompts whose keys/values must not change, added to the default preserve set.
    """
    return edit_patches(base, erase, anchor, preserve, [config or EditConfig()], category)[0]


#: The EditConfig fields that only choose how the solved deltas are factored: ``edit_patches`` varies them.
FACTORING: tuple[str, ...] = ("rank", "max_residual", "exact_svd")


@sized_threads
def edit_patches(
    base: Base,
    erase: Sequence[ConceptLike],
    anchor: str | Mapping[str, str] | None = None,
    preserve: Sequence[str] = (),
    configs: Sequence[EditConfig] = (EditConfig(),),
    category: str | None = None,
) -> list[Patch]:
    """``edit_patch`` once per config, from one pass of the prompts and one solve: the configs may differ only in
    how the deltas are factored (``FACTORING``: rank, max_residual, exact_svd), e.g. to compare ranks."""
    base.family.require_closed_form()
    if not configs:
        raise FmnPatchError("edit_patches needs at least one EditConfig")
    config = configs[0]
    unfactored = {f: getattr(config, f) for f in FACTORING}
    for other in configs[1:]:
        if dataclasses.replace(other, **unfactored) != config:
            raise FmnPatchError(
                f"the configs of one edit_patches call may differ only in {', '.join(FACTORING)}; make one call "
                "per set of the other fields"
            )
    bench = _bench(config, base)
    concepts = resolve(erase, bench, category)
    if not concepts:
        raise FmnPatchError("no concept to erase; name at least one, e.g. `fmnpatch edit circle`")
    anchors = [anchor_for(c, bench, anchor) for c in concepts]
    editor = Editor(base, config)
    for c, a in zip(concepts, anchors, strict=True):
        _check_anchor(base.family, c, a, bench)
    t0 = time.perf_counter()
    erased = [
        (*prompt, erase_weight_of(config, c.category))
        for c, a in zip(concepts, anchors, strict=True)
        for prompt in erase_prompts(c, a, bench)
    ]
    near = neighbour_prompts(bench, concepts) if config.bench_preserve else []
    rest, close = split_neighbours(_preserve(base.family, concepts, anchors, bench, config, preserve), near)
    with phase("encoding the edit's prompts", len(erased) + len(rest) + len(close), "prompts") as editor.bar:
        editor.erase(erased)
        editor.keep(rest)
        editor.keep(close, config.neighbour_weight)
    if editor.normal.erase_rows == 0:
        raise FmnPatchError(
            f"none of the prompts of {[c.name for c in concepts]} could be aligned with their anchor; check that "
            "the concept's words survive tokenization, or give another --anchor"
        )
    p = editor.solve()
    streamed = time.perf_counter() - t0  # encoding, the sums and the solve: shared by every config
    patches = []
    for each in configs:
        factors = editor.factors(p, each)
        report = editor.report
        report.seconds["total"] = streamed + report.seconds["svd"]
        patches.append(_patch(base, concepts, anchors, bench, each, report, factors))
    return patches


def start_factors(
    base: Base, concepts: Sequence[Concept], anchors: Mapping[str, str], bench: str, rank: int
) -> dict[str, tuple[Any, Any]]:
    """The closed-form edit of ``concepts`` toward ``anchors`` at ``rank``, as factors: where training starts on a
    family that offers the edit (``TrainConfig.init``). Every category's rows at ERASE_DEFAULT: the start that
    training's budget (methods/budget.py) and its preservation defaults were measured from."""
    config = EditConfig(rank=rank, bench=bench, erase_weight=ERASE_DEFAULT)
    return dict(edit_patch(base, concepts, anchor=anchors, config=config).factors)


def _patch(
    base: Base,
    concepts: Sequence[Concept],
    anchors: Sequence[str],
    bench: Bench | None,
    config: EditConfig,
    report: EditReport,
    factors: dict[str, tuple[Any, Any]],
) -> Patch:
    described = base.describe()
    info = PatchInfo(
        method=METHOD,
        concepts=tuple(PatchConcept(c.name, c.category) for c in concepts),
        base_model=described.model,
        base_revision=described.revision,
        base_hash=described.hash,
        architecture=described.architecture,
        config={**dataclasses.asdict(config), "bench": bench.name if bench else None},
        extra={
            "anchors": {c.name: a for c, a in zip(concepts, anchors, strict=True)},
            "erase_weights": {c.name: erase_weight_of(config, c.category) for c in concepts},
            "aliases": {c.name: list(c.aliases) for c in concepts if c.aliases},
            "rows": {"erase": report.erase_rows, "preserve": report.keep_rows},
            "prompts_skipped": report.skipped[:20],
            "residual": report.residual,
            "residuals": dict(report.residuals),
            "residual_kind": report.residual_kind,
            "seconds": dict(report.seconds),
        },
    )
    return Patch(factors, info, base.family.adapters.component)


def _preserve(
    family: Family,
    concepts: Sequence[Concept],
    anchors: Sequence[str],
    bench: Bench | None,
    config: EditConfig,
    extra: Sequence[str],
) -> list[str]:
    """The default preserve set (empty prompt, anchors' prompts, other bench concepts, vocabulary) plus ``extra``;
    prompts whose tokens contain an erased concept's words (any name or alias) are left out."""
    banned = [family.text.concept_ids(n) for c in concepts for n in c.names]
    anchor_prompts = [
        " ".join(fill(t, anchor).split())
        for c, anchor in zip(concepts, anchors, strict=True)
        for t in templates(c, bench)
    ]

    # each prompt tokenized once, however many names are banned (50 identities: 100 names)
    def names(prompt: str) -> bool:
        ids = family.text.token_ids(prompt)
        return any(find_subsequence(ids, sub) for sub in banned)

    return preserve_prompts(
        bench,
        concepts,
        first=anchor_prompts,
        last=[*family.text.common_words(config.vocab_words), *extra],
        bench_concepts=config.bench_preserve,
        names=names,
    )


def _bench(config: EditConfig, base: Base) -> Bench | None:
    name = config.bench or base.bench
    return None if name == "none" else load_bench(name)


def _check_anchor(family: Family, concept: Concept, anchor: str, bench: Bench | None) -> None:
    if not anchor.strip():
        return
    ids = family.text.token_ids(anchor)
    for name in concept.names:
        if find_subsequence(ids, family.text.concept_ids(name)):
            example = bench.anchor(concept.category) if bench is not None else ""
            raise FmnPatchError(
                f"anchor {anchor!r} contains the concept {name!r} it should replace; give an anchor without it, "
                f"e.g. --anchor {example or 'shape'!r}"
            )
