"""The streaming machinery of the closed-form edit: prompts go through the text encoder in batches at their true
token length (plus ``padding`` slots) into the shared normal equations, so memory does not grow with the number of
concepts: only two (dim x dim) sums are kept. ``solver`` solves the ridge least squares once for all layers;
``fmn_patch.format.lowrank`` turns each layer's delta into LoRA factors of the requested rank, or of the smallest
rank per layer within a residual target (``rank="auto"``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import values
from ..errors import FmnPatchError
from ..families.base import Base
from ..families.encoding import align
from ..families.tokens import ConceptNotFoundError
from ..format.lowrank import (
    AUTO_CAP,
    MAX_RESIDUAL,
    NARROW,
    Factors,
    ResidualKind,
    factorize,
    factorize_products,
    factorize_products_within,
    factorize_within,
)
from ..progress import Phase
from ..values import AUTO, MAX_BATCH, Rank
from .solver import NormalEquations, layer_delta

#: Erase-row weight per category when EditConfig.erase_weight is None; others get ERASE_DEFAULT. An identity's
#: name reads like its neighbours' (one attribute apart) to the text encoder, so it needs a stronger erase term
#: than an object to leave as few of its images (BENCHMARKS.md, "Neighbour weight").
ERASE: dict[str, float] = {"identity": 20.0}
ERASE_DEFAULT = 10.0


@dataclass(frozen=True)
class EditConfig:
    """How a closed-form edit is computed; every field is recorded in the patch header."""

    # LoRA rank of the patch (truncated SVD of each layer's delta), or "auto": per layer, the smallest rank (up to
    # fmn_patch.format.lowrank.AUTO_CAP) whose relative residual ||D - B A|| / ||D|| is at most max_residual
    rank: Rank = 16
    max_residual: float = MAX_RESIDUAL  # the residual target of rank="auto" (unused at a fixed rank)
    lam: float = 0.1  # ridge: pull toward the base weights, sum lam ||W' - W||^2
    # weight of each erase row (each concept position of each prompt); None: each concept's category's (ERASE)
    erase_weight: float | None = None
    preserve_weight: float = 1.0  # weight of each preserved row
    push: float = 1.5  # targets go this far past the anchor, away from the concept: t = a + push (a - c)
    after: bool = True  # also re-map the positions after the concept (to EOS): the concept lives there too
    padding: int | None = 0  # padding slots after EOS also re-mapped/preserved; None: all (slow at 77)
    bench: str | None = (
        None  # ConceptBench of templates, aliases, preserve set; None: the base's; "none": no bench
    )
    bench_preserve: bool = True  # preserve the bench's other concepts (their prompts, every position)
    # Extra factor on the rows of the bench's other concepts of an erased concept's own category (its neighbours, the
    # hardest to keep): the least-squares trade moves a kept concept in proportion to how little of the preserve set
    # it is, so with 100 other concepts each counts 1% and one near the erased one moves with it (see BENCHMARKS.md,
    # "neighbour weight").
    neighbour_weight: float = 10.0
    vocab_words: int = 1000  # preserve the model's N most frequent whole-word tokens (0: none)
    batch_size: int = 64  # prompts per text-encoder call
    # True/False: exact/randomised SVD of each formed delta, exact residuals; None: exact SVD for narrow layers,
    # wide ones factored without forming their delta (fmn_patch.format.lowrank.factorize_products), residuals estimated
    exact_svd: bool | None = None

    def __post_init__(self) -> None:
        values.rank(self.rank, "rank", example="8 or 'auto'")
        values.residual(self.max_residual, "max_residual")
        values.number(self.lam, "lam", 0, 1e6, example="0.1")
        if self.erase_weight is not None:
            values.number(self.erase_weight, "erase_weight", 0, 1e6, above=True, example=10)
        values.number(self.preserve_weight, "preserve_weight", 0, 1e6, example=1)
        values.number(self.neighbour_weight, "neighbour_weight", 0, 1e6, example=10)
        values.number(self.push, "push", 0, 100, example="1.5 (0: map exactly onto the anchor)")
        if self.padding is not None:
            values.whole(self.padding, "padding", 0, 10_000, example="0 (or None: all)")
        values.whole(self.vocab_words, "vocab_words", 0, 10_000_000, example=1000)
        values.whole(self.batch_size, "batch_size", 1, MAX_BATCH, example=64)


def erase_weight_of(config: EditConfig, category: str) -> float:
    """The erase-row weight of a concept of ``category``: the config's, else the category's default."""
    return config.erase_weight if config.erase_weight is not None else ERASE.get(category, ERASE_DEFAULT)


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

    def __init__(self, base: Base, config: EditConfig) -> None:
        self.config = config
        self.family = base.family
        self.text = self.family.text.text_states()
        self.targets = {  # (out, in) float32 on the CPU, where the solve runs
            name: layer.weight.detach().to("cpu", torch.float32)
            for name, layer in self.family.adapters.targets().items()
        }
        dims = {w.shape[1] for w in self.targets.values()}
        self.dim = self.text.encode(["a"], 0).shape[-1]
        if dims != {self.dim}:
            raise FmnPatchError(
                f"the model's key/value projections read {sorted(dims)}-dim text states but the text encoder gives "
                f"{self.dim}; load the pipeline whose text encoder and denoiser belong together"
            )
        self.normal = NormalEquations(self.dim)
        self.report = EditReport()
        self.bar: Phase | None = None  # where the prompts encoded so far are counted, if anyone listens
        self._anchor_cache: dict[str, torch.Tensor] = {}

    @property
    def padding(self) -> int:
        return self.text.max_length if self.config.padding is None else self.config.padding

    def erase(self, items: Iterable[tuple[str, str, str, float]]) -> None:
        """Add (prompt, concept words, anchor prompt, weight) in batches of ``batch_size`` prompts, whatever concept
        each comes from (batches of one concept each would call the text encoder for a handful of prompts)."""
        for chunk in _batches(items, self.config.batch_size):
            t0 = time.perf_counter()
            states = self.text.encode([p for p, _, _, _ in chunk], self.padding)  # (B, T, dim)
            anchors = self._anchor_states([a for _, _, a, _ in chunk])
            ids = self.text.ids([p for p, _, _, _ in chunk])
            anchor_ids = self.text.ids([a for _, _, a, _ in chunk])
            rows: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}  # by weight: rows, targets
            for i, (prompt, words, _, weight) in enumerate(chunk):
                pairs_i = self._pairs(prompt, words, ids[i], anchor_ids[i])
                if pairs_i is None:
                    self.report.skipped.append(prompt)
                    continue
                e, a = zip(*pairs_i, strict=True)
                found, targets = rows.setdefault(weight, ([], []))
                found.append(states[i, list(e)])
                targets.append(anchors[i][list(a)])
            self.report.seconds["encode"] = self.report.seconds.get("encode", 0.0) + time.perf_counter() - t0
            self.report.prompts += len(chunk)
            self._encoded(len(chunk))
            for weight, (found, targets) in rows.items():
                c, a_ = torch.cat(found), torch.cat(targets)  # (n, dim)
                self.normal.add_erase(c, a_ + self.config.push * (a_ - c), weight)

    def _pairs(
        self, prompt: str, words: str, ids: list[int], anchor_ids: list[int]
    ) -> list[tuple[int, int]] | None:
        try:
            placement = self.family.text.place(prompt, words)
        except ConceptNotFoundError:
            return None
        sub = self.family.text.concept_ids(words)
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

    def keep(self, prompts: Iterable[str], factor: float = 1.0) -> None:
        """Preserve every position (BOS .. EOS and the padding slots) of each prompt, each row at ``factor`` times
        the config's preserve_weight."""
        for chunk in _batches(prompts, self.config.batch_size):
            t0 = time.perf_counter()
            rows = self.text.rows(chunk, self.padding)
            self.report.seconds["encode"] = self.report.seconds.get("encode", 0.0) + time.perf_counter() - t0
            self._encoded(len(chunk))
            self.normal.add_keep(rows, self.config.preserve_weight * factor)

    def _encoded(self, prompts: int) -> None:
        if self.bar is not None:
            self.bar.advance(prompts)

    def solve(self) -> torch.Tensor:
        """The shared map P (in, in), float32: every layer's delta is its W @ P."""
        t0 = time.perf_counter()
        p = self.normal.solve(self.config.lam).float()
        self.report.seconds["solve"] = time.perf_counter() - t0
        self.report.erase_rows, self.report.keep_rows = self.normal.erase_rows, self.normal.keep_rows
        return p

    def factors(
        self, p: torch.Tensor, config: EditConfig | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """LoRA factors of every W @ P: narrow layers from the formed delta, wide ones without forming it.

        ``config``: whose rank, max_residual and exact_svd to factor with (default: the editor's)."""
        t0 = time.perf_counter()
        config = config or self.config
        exact = config.exact_svd
        wide = [n for n, w in sorted(self.targets.items()) if exact is None and min(w.shape) > NARROW]
        if config.rank == AUTO:
            done = self._within(p, wide, config.max_residual, exact)
        else:
            done = self._fixed(p, wide, config.rank, exact)
        self.report.residuals = {}
        factors, res, tot = {}, 0.0, 0.0
        for name, (a, b, r, t) in sorted(done.items()):
            factors[name] = (a, b)
            self.report.residuals[name] = (r / t) ** 0.5 if t > 0 else 0.0
            res, tot = res + r, tot + t
        self.report.residual = (res / tot) ** 0.5 if tot > 0 else 0.0
        self.report.residual_kind = "estimate" if wide else "exact"
        self.report.seconds["svd"] = time.perf_counter() - t0
        return factors

    def _fixed(self, p: torch.Tensor, wide: list[str], rank: int, exact: bool | None) -> dict[str, Factors]:
        """One rank for every layer, capped at min(out, in) of the narrowest (beyond it adds nothing)."""
        rank = min(rank, *(min(w.shape) for w in self.targets.values()))
        done = dict(zip(wide, factorize_products([self.targets[n] for n in wide], p, rank), strict=True))
        for name in sorted(set(self.targets) - set(wide)):
            done[name] = factorize(layer_delta(self.targets[name], p), rank, exact=exact)
        return done

    def _within(
        self, p: torch.Tensor, wide: list[str], target: float, exact: bool | None
    ) -> dict[str, Factors]:
        """Per layer the smallest rank up to ``AUTO_CAP`` within ``target``: one factorisation at the cap."""
        done = dict(
            zip(wide, factorize_products_within([self.targets[n] for n in wide], p, target), strict=True)
        )
        for name in sorted(set(self.targets) - set(wide)):
            delta = layer_delta(self.targets[name], p)
            done[name] = factorize_within(delta, target, AUTO_CAP, exact=exact)
        return done


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
