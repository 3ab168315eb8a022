"""Closed-form, data-free forgetting: re-map a concept's text keys/values onto an anchor's, as a LoRA patch.

For every erased concept (and each alias) the concept is written into its category's ConceptBench templates
("a red circle", "a picture of a red circle", ...) and into the same prompts with the anchor ("a red shape"). The
text encoder's states at the concept's tokens AND every later position (through its causal attention the concept
lives in all of them: the rest of the prompt, EOS and the padding) are asked to give the keys/values of the aligned
anchor states, pushed ``push`` further away from the concept (t = a + push (a - c), a negative-guidance step in
key/value space). A preserve set (other ConceptBench concepts, the anchors' prompts, the model's most frequent
vocabulary words, the empty prompt, a user file) keeps its keys/values. ``solver`` solves the ridge least squares
once for all layers; a truncated SVD turns each layer's delta into LoRA factors of the requested rank.

Prompts stream through in batches at their true token length (plus ``padding`` slots), so memory does not grow with
the number of concepts: only two (dim x dim) sums are kept.
"""

from __future__ import annotations

import dataclasses
import string
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from .base import describe_base
from .conceptbench import Bench, Concept, load_bench
from .encoding import TextStates, align
from .errors import FmnPatchError
from .patch import CATEGORIES, Category, Patch, PatchConcept, PatchInfo
from .solver import NARROW, NormalEquations, ResidualKind, factorize, factorize_products, layer_delta
from .targets import find_targets
from .tokens import ConceptNotFoundError, concept_ids, find_subsequence, place

#: Anchors per category for real checkpoints (UCE maps objects and styles to the empty string).
ANCHORS: dict[str, str] = {"identity": "a person", "object": "", "style": "", "nsfw": "", "other": ""}
#: Anchors of the toy world: the neutral words its captions use (fmn_patch.toy.world).
TOY_ANCHORS: dict[str, str] = {
    "identity": "a person",
    "object": "shape",
    "style": "plain",
    "nsfw": "",
    "other": "",
}
#: Templates for categories a bench does not cover.
FALLBACK_TEMPLATES: tuple[str, ...] = ("a photo of {name}", "an image of {name}", "a picture of {name}")
_BENCH_CATEGORY = {"id": "identity", "identity": "identity", "object": "object", "style": "style"}


@dataclass(frozen=True)
class EditConfig:
    """How a closed-form edit is computed; every field is recorded in the patch header."""

    rank: int = 16  # LoRA rank of the patch (truncated SVD of each layer's delta)
    lam: float = 0.1  # ridge: pull toward the base weights, sum lam ||W' - W||^2
    erase_weight: float = 1.0  # weight of each erase row (each concept position of each prompt)
    preserve_weight: float = 1.0  # weight of each preserved row
    push: float = 1.5  # targets go this far past the anchor, away from the concept: t = a + push (a - c)
    after: bool = True  # also re-map the positions after the concept (to EOS): the concept lives there too
    padding: int | None = 0  # padding slots after EOS also re-mapped/preserved; None: all (slow at 77)
    bench: str | None = None  # ConceptBench of templates, aliases, preserve set; None: toy or real by base
    bench_preserve: bool = True  # preserve the bench's other concepts (their prompts, every position)
    vocab_words: int = 1000  # preserve the model's N most frequent whole-word tokens (0: none)
    batch_size: int = 64  # prompts per text-encoder call
    # True/False: exact/randomised SVD of each formed delta, exact residuals; None: exact SVD for narrow layers,
    # wide ones factored without forming their delta (fmn_patch.solver.factorize_products), residuals estimated
    exact_svd: bool | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.rank >= 1, f"rank={self.rank} must be at least 1, e.g. --rank 8"),
            (self.lam >= 0, f"lam={self.lam} must be >= 0, e.g. 0.1"),
            (self.erase_weight > 0, f"erase_weight={self.erase_weight} must be > 0, e.g. 10"),
            (self.preserve_weight >= 0, f"preserve_weight={self.preserve_weight} must be >= 0, e.g. 1"),
            (self.push >= 0, f"push={self.push} must be >= 0 (0: map exactly onto the anchor)"),
            (self.padding is None or self.padding >= 0, f"padding={self.padding} must be >= 0 or None (all)"),
            (self.vocab_words >= 0, f"vocab_words={self.vocab_words} must be >= 0"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise FmnPatchError(message)


@dataclass(frozen=True)
class EditConcept:
    """A concept to erase: the words the model knows it by, its category, aliases, and (optionally) its anchor."""

    name: str
    category: Category = "object"
    aliases: tuple[str, ...] = ()
    anchor: str | None = None  # None: the default anchor of the category
    templates: tuple[str, ...] = ()  # prompts with one {name} slot; empty: the bench's for the category

    def __post_init__(self) -> None:
        object.__setattr__(self, "category", category_of(self.category))
        PatchConcept(self.name, self.category)  # validates the name
        for t in self.templates:
            if {f for _, f, _, _ in string.Formatter().parse(t) if f is not None} != {"name"}:
                raise FmnPatchError(
                    f"template {t!r} of concept {self.name!r} needs one slot, {{name}}: e.g. 'a photo of {{name}}'"
                )

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *(a for a in self.aliases if a != self.name))


def parse_concept(text: str) -> tuple[str, tuple[str, ...]]:
    """``"circle=disc,round thing"`` -> ``("circle", ("disc", "round thing"))``: a name and its aliases."""
    name, _, aliases = text.partition("=")
    if not name.strip():
        raise FmnPatchError(
            f"concept {text!r} has no name; write NAME or NAME=ALIAS,ALIAS (e.g. circle=disc)"
        )
    return name.strip(), tuple(a.strip() for a in aliases.split(",") if a.strip())


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a text file, without ``#`` comments."""
    path = Path(path)
    if not path.is_file():
        raise FmnPatchError(f"{path} is not a file; give a text file with one entry per line")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def resolve(
    erase: Iterable[str | EditConcept | Concept], bench: Bench | None, category: Category = "object"
) -> list[EditConcept]:
    """Concepts from names (``NAME[=ALIAS,...]``; category and aliases filled in from the bench when it knows them)."""
    out: list[EditConcept] = []
    for item in erase:
        if isinstance(item, EditConcept):
            out.append(item)
            continue
        known: Concept | None
        if isinstance(item, Concept):
            name, aliases, known = item.name, item.aliases, item
        else:
            name, aliases = parse_concept(item)
            known = _lookup(bench, name)
        if known is None:
            out.append(EditConcept(name, category, aliases))
            continue
        more = tuple(n for n in (known.name, *known.aliases) if n != name)
        cat = category_of(known.category)
        out.append(EditConcept(name, cat, tuple(dict.fromkeys((*aliases, *more)))))
    return out


def category_of(name: str) -> Category:
    """A patch category from a bench or user category name (``identity`` and ``id`` are the same)."""
    for candidate in (name, "identity" if name == "id" else "id" if name == "identity" else name):
        if candidate in CATEGORIES:
            return cast(Category, candidate)
    raise FmnPatchError(f"unknown category {name!r}; use one of {', '.join(CATEGORIES)}")


def _lookup(bench: Bench | None, name: str) -> Concept | None:
    if bench is None:
        return None
    try:
        return bench.concept(name)
    except KeyError:
        return None


@dataclass
class EditReport:
    """What the edit did: counts, skipped prompts, timings and the SVD residuals."""

    erase_rows: int = 0
    keep_rows: int = 0
    prompts: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    residuals: dict[str, float] = field(default_factory=dict)  # per module: ||D - B A|| / ||D||
    residual: float = 0.0  # over all modules
    residual_kind: ResidualKind = "exact"  # "estimate": some residuals estimated with random probes


class Editor:
    """Streams erase and preserve prompts through the text encoder into the shared normal equations."""

    def __init__(self, pipe: Any, config: EditConfig) -> None:
        self.config = config
        self.text = TextStates(pipe)
        self.targets = {  # (out, in) float32 on the CPU, where the solve runs
            name: layer.weight.detach().to("cpu", torch.float32)
            for name, layer in find_targets(pipe.unet).items()
        }
        dims = {w.shape[1] for w in self.targets.values()}
        self.dim = self.text.encode(["a"], 0).shape[-1]
        if dims != {self.dim}:
            raise FmnPatchError(
                f"the UNet's cross-attention reads {sorted(dims)}-dim text states but the text encoder gives "
                f"{self.dim}; load the pipeline whose text encoder and UNet belong together"
            )
        self.normal = NormalEquations(self.dim)
        self.report = EditReport()
        self._anchor_cache: dict[str, torch.Tensor] = {}

    @property
    def padding(self) -> int:
        return self.text.max_length if self.config.padding is None else self.config.padding

    def erase(self, pairs: Iterable[tuple[str, str, str]]) -> None:
        """Add (prompt, concept words, anchor prompt) triples in batches."""
        for chunk in _batches(pairs, self.config.batch_size):
            t0 = time.perf_counter()
            states = self.text.encode([p for p, _, _ in chunk], self.padding)  # (B, T, dim)
            anchors = self._anchor_states([a for _, _, a in chunk])
            ids = self.text.ids([p for p, _, _ in chunk])
            anchor_ids = self.text.ids([a for _, _, a in chunk])
            rows, targets = [], []
            for i, (prompt, words, _) in enumerate(chunk):
                pairs_i = self._pairs(prompt, words, ids[i], anchor_ids[i])
                if pairs_i is None:
                    self.report.skipped.append(prompt)
                    continue
                e, a = zip(*pairs_i, strict=True)
                rows.append(states[i, list(e)])
                targets.append(anchors[i][list(a)])
            self.report.seconds["encode"] = self.report.seconds.get("encode", 0.0) + time.perf_counter() - t0
            self.report.prompts += len(chunk)
            if rows:
                c, a_ = torch.cat(rows), torch.cat(targets)  # (n, dim)
                self.normal.add_erase(c, a_ + self.config.push * (a_ - c), self.config.erase_weight)

    def _pairs(
        self, prompt: str, words: str, ids: list[int], anchor_ids: list[int]
    ) -> list[tuple[int, int]] | None:
        try:
            placement = place(self.text.tokenizer, prompt, words)
        except ConceptNotFoundError:
            return None
        sub = concept_ids(self.text.tokenizer, words)
        start = min(placement.concept)
        pairs = align(ids, anchor_ids, start, len(sub))
        if pairs is None:
            return None
        if not self.config.after:
            pairs = [(e, a) for e, a in pairs if e in placement.concept]
        last_e, last_a = len(ids) - 1, len(anchor_ids) - 1
        slots = min(self.padding, self.text.max_length - len(ids), self.text.max_length - len(anchor_ids))
        return pairs + [(last_e + j, last_a + j) for j in range(1, slots + 1) if self.config.after]

    def _anchor_states(self, prompts: list[str]) -> list[torch.Tensor]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._anchor_cache))
        if missing:
            if len(self._anchor_cache) > 4096:
                self._anchor_cache.clear()
            states = self.text.encode(missing, self.padding)
            lengths = [len(x) for x in self.text.ids(missing)]
            for p, s, n in zip(missing, states, lengths, strict=True):
                self._anchor_cache[p] = s[: min(n + self.padding, self.text.max_length)]
        return [self._anchor_cache[p] for p in prompts]

    def keep(self, prompts: Iterable[str]) -> None:
        """Preserve every position (BOS .. EOS and the padding slots) of each prompt."""
        for chunk in _batches(prompts, self.config.batch_size):
            t0 = time.perf_counter()
            states = self.text.encode(chunk, self.padding)
            lengths = [len(x) for x in self.text.ids(chunk)]
            rows = [
                s[: min(n + self.padding, self.text.max_length)] for s, n in zip(states, lengths, strict=True)
            ]
            self.report.seconds["encode"] = self.report.seconds.get("encode", 0.0) + time.perf_counter() - t0
            self.normal.add_keep(torch.cat(rows), self.config.preserve_weight)

    def solve(self) -> torch.Tensor:
        """The shared map P (in, in), float32: every layer's delta is its W @ P."""
        t0 = time.perf_counter()
        p = self.normal.solve(self.config.lam).float()
        self.report.seconds["solve"] = time.perf_counter() - t0
        self.report.erase_rows, self.report.keep_rows = self.normal.erase_rows, self.normal.keep_rows
        return p

    def factors(self, p: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """LoRA factors of every W @ P: narrow layers from the formed delta, wide ones without forming it."""
        t0 = time.perf_counter()
        rank, exact = self.config.rank, self.config.exact_svd
        wide = [n for n, w in sorted(self.targets.items()) if exact is None and min(w.shape) > NARROW]
        done = dict(zip(wide, factorize_products([self.targets[n] for n in wide], p, rank), strict=True))
        for name in sorted(set(self.targets) - set(wide)):
            done[name] = factorize(layer_delta(self.targets[name], p), rank, exact=exact)
        factors, res, tot = {}, 0.0, 0.0
        for name, (a, b, r, t) in sorted(done.items()):
            factors[name] = (a, b)
            self.report.residuals[name] = (r / t) ** 0.5 if t > 0 else 0.0
            res, tot = res + r, tot + t
        self.report.residual = (res / tot) ** 0.5 if tot > 0 else 0.0
        self.report.residual_kind = "estimate" if wide else "exact"
        self.report.seconds["svd"] = time.perf_counter() - t0
        return factors


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ------------------------------------------------------------------------------------------------ prompts
def templates(bench: Bench | None, category: str) -> list[str]:
    """The category's bench templates with attribute slots expanded and ``{name}`` left open (plus bare ``{name}``)."""
    bench_category = _BENCH_CATEGORY.get(category)
    if bench is None or bench_category not in bench.templates:
        return ["{name}", *FALLBACK_TEMPLATES]
    probe = Concept("\x00", cast(Any, bench_category))
    return ["{name}", *(p.replace("\x00", "{name}") for p in bench.prompts(probe))]


def concept_templates(concept: EditConcept, bench: Bench | None) -> list[str]:
    """The concept's own templates (plus bare ``{name}``) when it has some, else its category's ``templates``."""
    if concept.templates:
        return list(dict.fromkeys(("{name}", *concept.templates)))
    return templates(bench, concept.category)


def erase_prompts(concept: EditConcept, anchor: str, bench: Bench | None) -> Iterator[tuple[str, str, str]]:
    """(prompt, concept words in it, the same prompt with the anchor) for each name of the concept and template."""
    for name in concept.names:
        for t in concept_templates(concept, bench):
            yield t.format(name=name), name, " ".join(t.format(name=anchor).split())


def vocabulary_words(tokenizer: Any, count: int) -> list[str]:
    """The ``count`` most frequent whole-word alphabetic tokens (BPE vocab order = merge order = frequency)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    words = [t[: -len("</w>")] for t, _ in vocab if t.endswith("</w>") and t not in special]
    return [w for w in words if len(w) > 1 and w.isalpha()][:count]


def preserve_prompts(
    concepts: Sequence[EditConcept],
    anchors: Sequence[str],
    bench: Bench | None,
    tokenizer: Any,
    config: EditConfig,
    extra: Sequence[str] = (),
) -> Iterator[str]:
    """The default preserve set (empty prompt, anchors' prompts, other bench concepts, vocabulary) plus ``extra``.

    Prompts that contain an erased concept's words (any name or alias) are left out.
    """
    erased = [concept_ids(tokenizer, n) for c in concepts for n in c.names]
    erased_names = {n for c in concepts for n in c.names}

    def clean(prompt: str) -> bool:
        ids = tuple(tokenizer(prompt, add_special_tokens=False).input_ids)
        return not any(find_subsequence(ids, sub) for sub in erased)

    seen: set[str] = set()
    for prompt in _preserve_sources(concepts, anchors, bench, tokenizer, config, erased_names, extra):
        if prompt not in seen and clean(prompt):
            seen.add(prompt)
            yield prompt


def _preserve_sources(
    concepts: Sequence[EditConcept],
    anchors: Sequence[str],
    bench: Bench | None,
    tokenizer: Any,
    config: EditConfig,
    erased_names: set[str],
    extra: Sequence[str],
) -> Iterator[str]:
    yield ""  # the unconditional prompt of classifier-free guidance
    for c, anchor in zip(concepts, anchors, strict=True):
        for t in concept_templates(c, bench):
            yield " ".join(t.format(name=anchor).split())
    if bench is not None and config.bench_preserve:
        for kept in bench.concepts:
            if erased_names.isdisjoint((kept.name, *kept.aliases)):
                for name in (kept.name, *kept.aliases):
                    yield from bench.prompts(kept, name)
    yield from vocabulary_words(tokenizer, config.vocab_words)
    yield from extra


# ----------------------------------------------------------------------------------------------- the verb
def edit_patch(
    pipe: Any,
    erase: Sequence[str | EditConcept | Concept],
    anchor: str | Mapping[str, str] | None = None,
    preserve: Sequence[str] = (),
    config: EditConfig | None = None,
    category: Category = "object",
) -> Patch:
    """A patch that makes ``pipe`` forget the ``erase`` concepts, computed in closed form without images.

    ``erase``: names (``"circle"``, ``"circle=disc"`` with aliases) or ``EditConcept``s; names the ConceptBench
    knows get its category and aliases, others get ``category``. ``anchor``: what the concepts become (one text for
    all, or per concept name); default per category (``ANCHORS``, ``TOY_ANCHORS`` on the toy model).
    ``preserve``: extra prompts whose keys/values must not change, added to the default preserve set.
    """
    config = config or EditConfig()
    toy = getattr(pipe, "_fmn_base_ref", None) == "toy"
    bench = _bench(config, toy)
    concepts = resolve(erase, bench, category)
    if not concepts:
        raise FmnPatchError("no concept to erase; name at least one, e.g. `fmnpatch edit circle`")
    defaults = TOY_ANCHORS if toy else ANCHORS
    anchors = [_anchor(c, anchor, defaults) for c in concepts]
    editor = Editor(pipe, config)
    for c, a in zip(concepts, anchors, strict=True):
        _check_anchor(editor.text.tokenizer, c, a)
    t0 = time.perf_counter()
    editor.erase(t for c, a in zip(concepts, anchors, strict=True) for t in erase_prompts(c, a, bench))
    editor.keep(preserve_prompts(concepts, anchors, bench, editor.text.tokenizer, config, preserve))
    if editor.normal.erase_rows == 0:
        raise FmnPatchError(
            f"none of the prompts of {[c.name for c in concepts]} could be aligned with their anchor; check that "
            "the concept's words survive tokenization, or give another --anchor"
        )
    factors = editor.factors(editor.solve())
    report = editor.report
    report.seconds["total"] = time.perf_counter() - t0
    base = describe_base(pipe)
    info = PatchInfo(
        method="edit",
        concepts=tuple(PatchConcept(c.name, c.category) for c in concepts),
        base_model=base.model,
        base_revision=base.revision,
        base_hash=base.hash,
        architecture=base.architecture,
        config={**dataclasses.asdict(config), "bench": bench.name if bench else None},
        extra={
            "anchors": {c.name: a for c, a in zip(concepts, anchors, strict=True)},
            "aliases": {c.name: list(c.aliases) for c in concepts if c.aliases},
            "rows": {"erase": report.erase_rows, "preserve": report.keep_rows},
            "prompts_skipped": report.skipped[:20],
            "residual": report.residual,
            "residuals": report.residuals,
            "residual_kind": report.residual_kind,
            "seconds": report.seconds,
        },
    )
    return Patch(factors, info)


def _bench(config: EditConfig, toy: bool) -> Bench | None:
    name = config.bench or ("toy" if toy else "real")
    if name == "none":
        return None
    try:
        return load_bench(name)
    except (FileNotFoundError, ValueError) as e:
        raise FmnPatchError(str(e)) from e


def _anchor(concept: EditConcept, anchor: str | Mapping[str, str] | None, defaults: Mapping[str, str]) -> str:
    if concept.anchor is not None:
        return concept.anchor
    if isinstance(anchor, str):
        return anchor
    if anchor is not None and concept.name in anchor:
        return anchor[concept.name]
    return defaults.get(_BENCH_CATEGORY.get(concept.category, concept.category), "")


def _check_anchor(tokenizer: Any, concept: EditConcept, anchor: str) -> None:
    if not anchor.strip():
        return
    ids = tuple(tokenizer(anchor, add_special_tokens=False).input_ids)
    for name in concept.names:
        if find_subsequence(ids, concept_ids(tokenizer, name)):
            raise FmnPatchError(
                f"anchor {anchor!r} contains the concept {name!r} it should replace; give an anchor without it, "
                f"e.g. --anchor {ANCHORS.get(concept.category) or 'shape'!r}"
            )
