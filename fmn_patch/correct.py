"""``correct_patch``: concept correction and disentanglement. Remove an unwanted association from a concept while
keeping the concept: "a circle" that the model draws red 97% of the time should come out in every colour, while
"a red circle" stays red and nothing else moves.

The patch is the same kind of LoRA on ``attn2.to_k`` / ``attn2.to_v`` as every other patch. What it learns is a
distillation: for a prompt naming the concept without the attribute ("a circle") and noised images x_t drawn by the
base model from its variants ("a red circle", "a green circle", ...), the patched prediction must match the base
model's prediction for the variant that drew x_t:

    loss = w_d * || eps'(x_t, "a circle") - eps(x_t, "a <variant> circle") ||^2      # x_t from that variant
         + w_p * || K'/V'(preserve tokens) - K/V(preserve tokens) ||^2               # variants and the rest stay

Averaged over variants drawn uniformly, the minimiser of the first term is the noise prediction of the uniform
mixture of the variants, so the corrected prompt samples each variant equally often instead of blending them. The
variant prompts themselves and every other prompt are in the preservation set, which is what keeps "a red circle"
red. No attention re-steering is involved (its weight is 0).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .base import describe_base
from .conceptbench import load_bench
from .encoding import encode
from .errors import FmnPatchError
from .patch import Patch, PatchConcept, PatchInfo
from .prompts import preserve_prompts
from .train import TrainConfig, TrainingSet, optimise, reference_latents, take_factors

#: Prompts naming a concept without the attribute being corrected, "{}" = the concept.
DEFAULT_TEMPLATES: tuple[str, ...] = ("a {}", "a picture of a {}", "{}")


@dataclass
class CorrectConfig:
    """Everything that decides the correction patch. Same config, inputs and seed give the same tensors."""

    rank: int = 4
    steps: int = 600  # optimisation steps (300 left the toy circle's colours at 81% of the maximum entropy)
    lr: float = 3e-3
    batch_size: int = 8
    seed: int = 0
    denoise_weight: float = 100.0  # w_d, the distillation term
    preserve_weight: float = 30.0  # w_p, keys/values of the variants' and every other prompt's tokens
    images_per_prompt: int = 4  # images the base draws per variant prompt
    image_steps: int = 20
    image_guidance: float = 5.0
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    bench: str = "toy"  # where the default preserve set comes from

    def __post_init__(self) -> None:
        for name in ("rank", "steps", "batch_size", "images_per_prompt", "image_steps"):
            if getattr(self, name) < 1:
                raise FmnPatchError(f"{name}={getattr(self, name)} must be at least 1")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if not self.templates or bad:
            raise FmnPatchError(
                f"templates {bad or list(self.templates)!r} must each contain one '{{}}' for the concept, "
                "e.g. 'a photo of a {}'"
            )

    def train_config(self) -> TrainConfig:
        """The training loop's config: distillation toward the variants, no re-steering, no negative guidance."""
        return TrainConfig(
            rank=self.rank,
            steps=self.steps,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=self.seed,
            eta=0.0,
            resteer_weight=0.0,
            denoise_weight=self.denoise_weight,
            preserve_weight=self.preserve_weight,
            images_per_prompt=self.images_per_prompt,
            image_steps=self.image_steps,
            image_guidance=self.image_guidance,
            bench=self.bench,
        )


def variant_pairs(
    concept: str, variants: Sequence[str], templates: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Every template with the concept, once per variant, and the same template with the variant in its place.

    ("circle", ["red circle", "blue circle"], ["a {}"]) -> (["a circle", "a circle"], ["a red circle", "a blue
    circle"]).
    """
    prompts = [t.format(concept) for t in templates for _ in variants]
    targets = [t.format(v) for t in templates for v in variants]
    return prompts, targets


def attribute_variants(concept: str, attribute: str, bench_name: str = "toy") -> list[str]:
    """``"<value> <concept>"`` for every value of a bench attribute (the toy bench: colour -> red, green, ...)."""
    bench = load_bench(bench_name)
    values = bench.attributes.get(attribute)
    if not values:
        raise FmnPatchError(
            f"the {bench.name!r} ConceptBench has no attribute {attribute!r}; it has {sorted(bench.attributes)}. "
            "Give the variants with --into instead"
        )
    return [f"{v} {concept}" for v in values]


def correct_patch(
    pipe: Any,
    concept: str,
    variants: Sequence[str],
    config: CorrectConfig | None = None,
    *,
    preserve: Sequence[str] = (),
    progress: bool = True,
) -> Patch:
    """A patch after which prompts naming ``concept`` draw each of ``variants`` equally often, while the variants'
    own prompts and every other prompt keep their keys/values. ``pipe`` is left exactly as it was."""
    config = config or CorrectConfig()
    concept = concept.strip()
    variants = [v.strip() for v in variants]
    if not concept:
        raise FmnPatchError("no concept given; name the concept to correct, e.g. fmnpatch correct circle")
    if len(variants) < 2:
        raise FmnPatchError(
            f"got {len(variants)} variant(s) {variants!r}; give at least two, e.g. --into 'red circle' "
            "--into 'blue circle' (or --attribute colour on the toy world)"
        )
    if any(concept not in v for v in variants):
        missing = [v for v in variants if concept not in v]
        raise FmnPatchError(
            f"variants {missing!r} do not contain the concept {concept!r}; write e.g. 'red {concept}'"
        )
    bench = load_bench(config.bench)
    started = time.perf_counter()
    prompts, targets = variant_pairs(concept, variants, config.templates)
    train = config.train_config()
    latents, latent_prompt = reference_latents(pipe, targets, train, None)
    corrected = set(prompts)
    keep = [p for p in preserve_prompts(bench, [], [*targets, *preserve]) if p not in corrected]
    batch = TrainingSet(
        concept=encode(pipe, prompts),
        anchor=encode(pipe, targets),
        masks=torch.zeros(len(prompts), pipe.tokenizer.model_max_length),
        latents=latents,
        latent_prompt=latent_prompt,
        preserve=encode(pipe, keep).states.flatten(0, 1),
        concepts=1,
        eta=torch.zeros(len(prompts)),
        preserve_weight=config.preserve_weight,
    )
    report = optimise(pipe, batch, train, progress)
    factors = take_factors(pipe)
    seconds = time.perf_counter() - started
    base = describe_base(pipe)
    info = PatchInfo(
        method="correct",
        concepts=(PatchConcept(name=concept, category="other"),),
        base_model=base.model,
        base_revision=base.revision,
        base_hash=base.hash,
        architecture=base.architecture,
        title=f"Correct {concept!r} toward {len(variants)} variants",
        config={**dataclasses.asdict(config), "variants": list(variants)},
        extra={
            "train_seconds": round(seconds, 3),
            "final_loss": report.losses[-1],
            "loss_terms": report.parts,
        },
    )
    return Patch(factors, info)


def entropy_bits(counts: Sequence[int]) -> float:
    """Shannon entropy (bits) of a distribution given as counts; 0 for an empty one."""
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c > 0) if total else 0.0


def attribute_counts(
    pipe: Any, judge: Any, prompts: Sequence[str], head: str, seeds: Sequence[int], steps: int = 20
) -> dict[str, int]:
    """How often the toy judge's ``head`` (e.g. "colour") names each of its classes on generations of ``prompts``."""
    from .judge import TOY_HEADS
    from .mscore import SamplerConfig, generate

    images = generate(pipe, list(prompts), SamplerConfig(steps=steps, seeds=tuple(seeds)), progress=False)
    names = judge.predict(images)[head]
    return {c: names.count(c) for c in TOY_HEADS[head]}


@dataclass
class CorrectionScore:
    """What a correction achieved, judged on fresh generations (toy world)."""

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
    pipe: Any,
    judge: Any,
    concept: str,
    variants: Sequence[str],
    head: str = "colour",
    seeds: Sequence[int] = tuple(range(16)),
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> CorrectionScore:
    """Entropy of the attribute over the bare concept's generations, and how often each variant's prompts show
    that variant's value (the variant minus the concept's words, e.g. "red circle" -> "red")."""
    counts = attribute_counts(pipe, judge, [t.format(concept) for t in templates], head, seeds)
    accuracy = {}
    for variant in variants:
        value = variant.replace(concept, "").strip()
        seen = attribute_counts(pipe, judge, [t.format(variant) for t in templates], head, seeds)
        accuracy[variant] = seen.get(value, 0) / max(1, sum(seen.values()))
    return CorrectionScore(counts, entropy_bits(list(counts.values())), math.log2(len(counts)), accuracy)
