"""``correct_patch``: concept correction and disentanglement. Remove an unwanted association from a concept while
keeping the concept: "a circle" that the model draws red almost always should come out in every colour, while
"a red circle" stays red and nothing else moves.

The patch is the same kind of LoRA on the text-side keys/values as every other patch. What it learns is a
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
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import values
from ..concepts.bench import load_bench
from ..concepts.prompts import BARE_TEMPLATES, preserve_prompts
from ..errors import FmnPatchError
from ..families.base import Base
from ..families.threads import sized_threads
from ..format.header import PatchConcept, PatchInfo
from ..format.patch import Patch
from ..values import MAX_BATCH, MAX_STEPS
from .dataset import TrainingSet, preserve_states, reference_latents
from .lora import check_rank, lora_adapter
from .steps import run_steps
from .train_config import TrainConfig

#: Prompts naming a concept without the attribute being corrected, "{}" = the concept.
DEFAULT_TEMPLATES: tuple[str, ...] = BARE_TEMPLATES


@dataclass(frozen=True)
class CorrectConfig:
    """Everything that decides the correction patch. Same config, inputs and seed give the same tensors."""

    rank: int = 4
    steps: int = 600  # optimisation steps (why 600: BENCHMARKS.md "Training defaults")
    lr: float = 3e-3
    batch_size: int = 8
    seed: int = 0
    denoise_weight: float = 100.0  # w_d, the distillation term
    preserve_weight: float = 30.0  # w_p, keys/values of the variants' and every other prompt's tokens
    images_per_prompt: int = 4  # images the base draws per variant prompt
    image_steps: int = 20
    image_guidance: float = 5.0
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    bench: str | None = None  # where attributes and the default preserve set come from; None: the base's

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))
        # TrainConfig reads steps or batch size 0 as "the start's budget"; a correction gives both
        values.whole(self.steps, "steps", 1, MAX_STEPS, example=600)
        values.whole(self.batch_size, "batch_size", 1, MAX_BATCH, example=8)
        self.train_config()  # validates the shared fields (rank, lr, ...) with TrainConfig's checks
        bad = [t for t in self.templates if not isinstance(t, str) or t.count("{}") != 1]
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
            pool=0,  # correction keeps drawing fresh samples at the base's size (re-steering's cost levers are off)
            train_size=None,
            checkpointing=False,
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


def attribute_variants(concept: str, attribute: str, bench_name: str) -> list[str]:
    """``"<value> <concept>"`` for every value of a bench attribute (the toy bench: colour -> red, green, ...)."""
    bench = load_bench(bench_name)
    values = bench.attributes.get(attribute)
    if not values:
        raise FmnPatchError(
            f"the {bench.name!r} ConceptBench has no attribute {attribute!r}; it has {sorted(bench.attributes)}. "
            "Give the variants with --into instead"
        )
    return [f"{v} {concept}" for v in values]


@sized_threads
def correct_patch(
    base: Base,
    concept: str,
    variants: Sequence[str],
    config: CorrectConfig | None = None,
    *,
    preserve: Sequence[str] = (),
    progress: bool = True,
) -> Patch:
    """A patch after which prompts naming ``concept`` draw each of ``variants`` equally often, while the variants'
    own prompts and every other prompt keep their keys/values. ``base`` is left exactly as it was."""
    config = config or CorrectConfig()
    concept = concept.strip()
    variants = [v.strip() for v in variants]
    if not concept:
        raise FmnPatchError("no concept given; name the concept to correct, e.g. fmnpatch correct circle")
    check_rank(base, config.rank)
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
    bench = load_bench(config.bench or base.bench)
    started = time.perf_counter()
    prompts, targets = variant_pairs(concept, variants, config.templates)
    train = config.train_config()
    latents, latent_prompt = reference_latents(
        base, targets, train.images_per_prompt, steps=train.image_steps, guidance=train.image_guidance
    )
    corrected = set(prompts)
    keep = [p for p in preserve_prompts(bench, [], last=[*targets, *preserve]) if p not in corrected]
    family = base.family
    batch = TrainingSet(
        concept=family.text.encode(prompts),
        anchor=family.text.encode(targets),
        masks=torch.zeros(len(prompts), family.text.max_length),
        latents=latents,
        latent_prompt=latent_prompt,
        preserve=preserve_states(base, keep, latents),
        concepts=1,
        eta=torch.zeros(len(prompts)),
        preserve_weight=config.preserve_weight,
    )
    with lora_adapter(base, train.rank, seed=train.seed) as session:
        report = run_steps(session, batch, train, train.steps, progress)
        factors = session.factors()
    seconds = time.perf_counter() - started
    described = base.describe()
    info = PatchInfo(
        method="correct",
        concepts=(PatchConcept(name=concept, category="other"),),
        base_model=described.model,
        base_revision=described.revision,
        base_hash=described.hash,
        architecture=described.architecture,
        title=f"Correct {concept!r} toward {len(variants)} variants",
        config={**dataclasses.asdict(config), "bench": bench.name, "variants": list(variants)},
        extra={
            "train_seconds": round(seconds, 3),
            "final_loss": report.losses[-1],
            "loss_terms": report.parts,
        },
    )
    return Patch(factors, info, family.adapters.component)
