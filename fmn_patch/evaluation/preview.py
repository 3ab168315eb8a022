"""Side-by-side renders of a base model and the same model with patches applied."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from .. import values
from ..concepts.bench import Bench, Concept
from ..errors import BenchError
from ..families.base import Base
from ..families.stack import apply_patches, remove_patches
from ..families.threads import sized_threads
from ..format.category import category_of
from ..format.patch import Patch
from ..values import MAX_STEPS
from .grid import labelled_grid


@dataclass(frozen=True)
class SampleConfig:
    """How images are drawn: a fixed few-step sampler, deterministic for a seed."""

    steps: int = 20  # denoising steps of the pipeline's own scheduler
    guidance: float = 5.0  # classifier-free guidance scale
    height: int | None = None  # None: the pipeline's default size
    width: int | None = None

    def __post_init__(self) -> None:
        values.whole(self.steps, "steps", 1, MAX_STEPS, example=20)
        values.number(self.guidance, "guidance", 0, 1000, example=5)
        for name in ("height", "width"):
            if getattr(self, name) is not None:
                values.whole(getattr(self, name), name, 8, 16384, example=512)


@sized_threads
def sample(
    base: Base,
    prompt: str,
    seeds: Sequence[int],
    config: SampleConfig = SampleConfig(),
    *,
    desc: str = "drawing images",
) -> list[Image.Image]:
    """One image per seed; each seed owns its generator, so images do not depend on batch composition. ``desc``:
    the phase's name on the progress channel."""
    images: list[Image.Image] = base.family.images.generate(
        [prompt],
        seeds,
        steps=config.steps,
        guidance=config.guidance,
        output="pil",
        batch_size=1,
        height=config.height,
        width=config.width,
        progress=True,
        desc=desc,
    )
    return images


@sized_threads
def preview(
    base: Base,
    patches: Sequence[Patch],
    prompts: Sequence[str],
    *,
    weights: Sequence[float] | None = None,
    seeds: Sequence[int] = (0,),
    config: SampleConfig = SampleConfig(),
    strict: bool = False,
) -> Image.Image:
    """A grid with one row per prompt and columns base | patched for each seed; the pipeline is left unpatched."""
    before = [sample(base, p, seeds, config, desc=f"drawing {p!r} with the base") for p in prompts]
    names = apply_patches(base, patches, weights, strict=strict)
    try:
        patched = [sample(base, p, seeds, config, desc=f"drawing {p!r} patched") for p in prompts]
    finally:
        remove_patches(base, names)
    rows = [
        [img for pair in zip(b, q, strict=True) for img in pair] for b, q in zip(before, patched, strict=True)
    ]
    columns = [f"{label} s{seed}" for seed in seeds for label in ("base", "patched")]
    scale = max(1, 128 // rows[0][0].size[0])
    return labelled_grid(rows, row_labels=list(prompts), col_labels=columns, scale=scale)


def check_prompts(bench: Bench, patch: Patch, kept: int = 2) -> list[str]:
    """A quick ConceptBench check of ``patch``: a prompt of each erased concept, one with an alias of it, and
    prompts of ``kept`` concepts it should leave alone (its category's first, then others), one each."""
    erased = [bench.find(c.name) or Concept(c.name, category_of(c.category)) for c in patch.info.concepts]
    gone = {w for c in erased for w in c.names}
    prompts = []
    for concept in erased:
        prompts.append(_first_prompt(bench, concept, concept.name))
        if concept.aliases:
            prompts.append(_first_prompt(bench, concept, concept.aliases[0]))
    others = [c for c in bench.concepts if not gone & set(c.names)]
    others.sort(key=lambda c: c.category != erased[0].category if erased else False)
    prompts += [_first_prompt(bench, c, c.name) for c in others[:kept]]
    return list(dict.fromkeys(prompts))


def _first_prompt(bench: Bench, concept: Concept, name: str) -> str:
    try:
        return bench.prompts(concept, name)[0]
    except BenchError:  # a category this bench has no templates for
        return name
