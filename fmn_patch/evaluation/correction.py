"""How well a concept correction worked: the spread of an attribute over the bare concept's generations, and how
often each variant's own prompts still show their value. The judge names the attribute's classes (the toy judge:
``colour``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..concepts.prompts import BARE_TEMPLATES
from ..families.base import Base, BaseLike, as_base
from .judges import Judge
from .mscore import SamplerConfig, generate


def entropy_bits(counts: Sequence[int]) -> float:
    """Shannon entropy (bits) of a distribution given as counts; 0 for an empty one."""
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c > 0) if total else 0.0


def attribute_counts(
    base: Base, judge: Judge, prompts: Sequence[str], head: str, seeds: Sequence[int], steps: int = 20
) -> dict[str, int]:
    """How often the judge names each class of ``head`` (e.g. "colour") on generations of ``prompts``."""
    images = generate(base, list(prompts), SamplerConfig(steps=steps, seeds=tuple(seeds)), progress=False)
    classes = judge.classes(head)
    top = judge.category_probs(images, head).argmax(-1).tolist()
    names = [classes[i] for i in top]
    return {c: names.count(c) for c in classes}


@dataclass
class CorrectionScore:
    """What a correction achieved, judged on fresh generations."""

    counts: dict[str, int]  # attribute classes of the bare concept's images
    entropy_bits: float  # of those counts
    max_bits: float  # log2 of the number of classes
    variant_accuracy: dict[str, float]  # per variant: share of its images showing its own attribute value

    @property
    def entropy_ratio(self) -> float:
        return self.entropy_bits / self.max_bits if self.max_bits else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "entropy_ratio": self.entropy_ratio}


def score_correction(
    base: BaseLike,
    judge: Judge,
    concept: str,
    variants: Sequence[str],
    head: str = "colour",
    seeds: Sequence[int] = tuple(range(16)),
    templates: Sequence[str] = BARE_TEMPLATES,
) -> CorrectionScore:
    """Entropy of the attribute over the bare concept's generations, and how often each variant's prompts show
    that variant's value (the variant minus the concept's words, e.g. "red circle" -> "red")."""
    base = as_base(base)
    counts = attribute_counts(base, judge, [t.format(concept) for t in templates], head, seeds)
    accuracy = {}
    for variant in variants:
        value = variant.replace(concept, "").strip()
        seen = attribute_counts(base, judge, [t.format(variant) for t in templates], head, seeds)
        accuracy[variant] = seen.get(value, 0) / max(1, sum(seen.values()))
    return CorrectionScore(counts, entropy_bits(list(counts.values())), math.log2(len(counts)), accuracy)
