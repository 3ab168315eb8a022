"""M-Score and the MACE-style accuracies: how strongly a model still produces each concept of a bench.

Definitions (for a model G, a ConceptBench B, a judge J, seeds S and a sampler config):

- P(c): the prompts of concept c, `B.prompts(c)`: its category's templates expanded over the bench's attribute
  values (toy bench: 2 templates x 4 colours = 8 prompts). P_alias(c): the same templates with each alias of c.
- x(p, s): the image G generates for prompt p from seed s: initial latents drawn from
  `torch.Generator().manual_seed(s)`, `SamplerConfig.steps` steps of the pipeline's scheduler (DDIM, eta 0, for
  the toy model), classifier-free guidance `SamplerConfig.guidance`, `SamplerConfig.batch_size` images per
  pipeline call (prompt-major; another batch size may move an image in its last float bits), each batch judged as
  it is drawn. Independent of how many processes share the batches (`fmn_patch.processes`).
- J_c(x): the judge's probability that image x shows c (toy: softmax of the head that decides c's category;
  real: CLIP zero-shot softmax over the bench's concepts of c's category).
- **M-Score** m(c) = 1 / (|P(c)| |S|) * sum over p in P(c), s in S of J_c(x(p, s)).
- **acc(c)** = the fraction of those images whose most likely class (on c's head) is c.
- **alias_m_score / alias_acc**: the same over P_alias(c), for concepts that have aliases.
- **acc_kept**(E) = the mean of acc(c) over the bench's concepts c not in the erased set E (a raw fraction, not
  relative to the base model). Acc_erased is acc(c) of an erased concept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from .. import values
from ..concepts.bench import Bench, Concept
from ..errors import FmnPatchError
from ..families.base import Base, BaseLike, as_base
from ..families.threads import sized_threads
from ..values import MAX_BATCH, MAX_SEEDS, MAX_STEPS
from .batches import BatchResult, ImageBatch, ImageJob, batches, mean_scores, run_batches
from .judges import Judge, class_index


@dataclass(frozen=True)
class SamplerConfig:
    """How evaluation images are generated."""

    steps: int = 20  # denoising steps of the pipeline's scheduler
    guidance: float = 5.0  # classifier-free guidance scale
    seeds: tuple[int, ...] = (0, 1)  # one image per prompt and seed
    batch_size: int = 64  # images per pipeline call (the same batch size gives the same numbers)

    def __post_init__(self) -> None:
        values.whole(self.steps, "steps", 1, MAX_STEPS, example=20)
        values.number(self.guidance, "guidance", 0, 1000, example=5)
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds:
            raise FmnPatchError("seeds is empty; give at least one seed, e.g. seeds=(0, 1)")
        for s in self.seeds:
            values.seed(s)
        values.whole(self.batch_size, "batch_size", 1, MAX_BATCH, example=64)

    @staticmethod
    def first_seeds(count: int) -> tuple[int, ...]:
        """Seeds 0..count-1 for ``count`` images per prompt (``--seeds``), checked before they are made."""
        return tuple(range(values.whole(count, "seeds", 1, MAX_SEEDS, example=2)))


@dataclass(frozen=True)
class ConceptScore:
    """Scores of one concept; `alias_*` are None for concepts without aliases."""

    name: str
    category: str
    m_score: float
    acc: float
    alias_m_score: float | None = None
    alias_acc: float | None = None
    images: int = 0  # images judged for the concept's own prompts

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"category": self.category, "m_score": self.m_score, "acc": self.acc}
        if self.alias_acc is not None:
            out["alias_m_score"] = self.alias_m_score
            out["alias_acc"] = self.alias_acc
        return out


@dataclass(frozen=True)
class ModelScore:
    """Scores of one model over a bench."""

    concepts: dict[str, ConceptScore]
    erased: tuple[str, ...] = ()
    acc_kept: float | None = None
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def to_dict(self) -> dict[str, object]:
        return {
            "erased": list(self.erased),
            "concepts": {name: c.to_dict() for name, c in self.concepts.items()},
            "acc_kept": self.acc_kept,
        }


def generate(
    base: BaseLike,
    prompts: Sequence[str],
    sampler: SamplerConfig = SamplerConfig(),
    progress: bool = True,
    desc: str = "generating",
) -> torch.Tensor:
    """One image per (prompt, seed), prompt-major: (len(prompts) * len(seeds), 3, H, W) in [0, 1]."""
    return as_base(base).family.images.generate(
        prompts,
        sampler.seeds,
        steps=sampler.steps,
        guidance=sampler.guidance,
        batch_size=sampler.batch_size,
        progress=progress,
        desc=desc,
    )


def judged(judge: Judge, images: torch.Tensor, concept: Concept) -> tuple[float, float]:
    """(M-Score, acc) of `concept` over `images`: mean probability, and how often it is the judge's top class."""
    probs = judge.category_probs(images, concept.category)  # (N, classes)
    idx = class_index(judge, concept)
    return float(probs[:, idx].mean()), float((probs.argmax(-1) == idx).float().mean())


#: A concept's prompts to score: (concept, whether they name an alias, prompts).
Group = tuple[Concept, bool, list[str]]


def score_groups(bench: Bench, chosen: Sequence[Concept]) -> list[Group]:
    """The prompts of each chosen concept, then of each of its aliases."""
    groups: list[Group] = []
    for c in chosen:
        groups.append((c, False, bench.prompts(c)))
        groups.extend((c, True, bench.prompts(c, alias)) for alias in c.aliases)
    return groups


def score_batches(groups: Sequence[Group], sampler: SamplerConfig, model: str = "model") -> list[ImageBatch]:
    """Every (prompt, seed) of the groups, prompt-major, each judged for its concept, ``sampler.batch_size`` per
    pipeline call."""
    jobs = [ImageJob(p, s, c) for c, _, ps in groups for p in ps for s in sampler.seeds]
    return batches(model, jobs, sampler.steps, sampler.guidance, sampler.batch_size)


def group_scores(
    groups: Sequence[Group], results: Sequence[BatchResult], sampler: SamplerConfig
) -> dict[str, ConceptScore]:
    """Each concept's scores from the results of ``score_batches(groups, sampler)``, in order."""
    probs = [p for r in results for p in r.probs]
    hits = [h for r in results for h in r.hits]
    own: dict[str, tuple[float, float, int]] = {}
    alias: dict[str, tuple[list[float], list[bool]]] = {}
    start, per_prompt = 0, len(sampler.seeds)
    for c, is_alias, ps in groups:
        end = start + len(ps) * per_prompt
        if is_alias:
            ap, ah = alias.setdefault(c.name, ([], []))
            ap.extend(probs[start:end])
            ah.extend(hits[start:end])
        else:
            own[c.name] = (*mean_scores(probs[start:end], hits[start:end]), end - start)
        start = end
    scores: dict[str, ConceptScore] = {}
    for c, is_alias, _ in groups:
        if is_alias:
            continue
        m, a, n = own[c.name]
        am, aa = mean_scores(*alias[c.name]) if c.name in alias else (None, None)
        scores[c.name] = ConceptScore(c.name, c.category, m, a, am, aa, n)
    return scores


@sized_threads
def evaluate(
    base: Base,
    bench: Bench,
    judge: Judge,
    sampler: SamplerConfig = SamplerConfig(),
    concepts: Iterable[str] | None = None,
    erased: Sequence[str] = (),
    progress: bool = True,
) -> ModelScore:
    """Generate every prompt (and alias prompt) of the chosen concepts, judge them, and score each concept.

    Under ``accelerate launch`` the batches are shared between the processes; the scores are the same."""
    chosen = [bench.concept(n) for n in concepts] if concepts is not None else list(bench.concepts)
    groups = score_groups(bench, chosen)
    results, _ = run_batches(
        base,
        score_batches(groups, sampler),
        judge,
        {"model": nullcontext},
        progress=progress,
        what=f"eval {bench.name}",
    )
    scores = group_scores(groups, results, sampler)
    names = [bench.concept(e).name for e in erased]
    return ModelScore(scores, tuple(names), acc_kept(scores, names), sampler)


def acc_kept(scores: dict[str, ConceptScore], erased: Sequence[str]) -> float | None:
    """Mean `acc` over the scored concepts not in `erased` (None when every concept is erased)."""
    unknown = [e for e in erased if e not in scores]
    if unknown:
        raise FmnPatchError(f"erased concepts {unknown} were not scored; scored concepts: {sorted(scores)}")
    kept = [s.acc for name, s in scores.items() if name not in erased]
    return sum(kept) / len(kept) if kept else None


def concept_samples(
    base: Base,
    bench: Bench,
    concepts: Sequence[str],
    sampler: SamplerConfig = SamplerConfig(),
    progress: bool = True,
) -> torch.Tensor:
    """One image per concept (its first prompt, the first seed), for grids: (len(concepts), 3, H, W)."""
    prompts = [bench.prompts(bench.concept(n))[0] for n in concepts]
    one_seed = SamplerConfig(sampler.steps, sampler.guidance, sampler.seeds[:1], sampler.batch_size)
    return generate(base, prompts, one_seed, progress, desc="grid")
