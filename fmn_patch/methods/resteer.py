"""``train_patch``: Forget-Me-Not attention re-steering, trained as a LoRA patch on a family's text-side K/V.

One step, for a batch of the concepts' prompts and noised reference latents x_t:

    loss = w_r * resteer(attention at the concept's positions)                 # FMN: pixels stop looking at it
         + w_d * || eps'(x_t, concept) - [eps(x_t, anchor) - eta (eps(x_t, concept) - eps(x_t, anchor))] ||^2
         + w_p * || K'/V'(preserve tokens) - K/V(preserve tokens) ||^2         # nothing else moves

The re-steering term reads attention maps, which depend on Q and K only: it gives the value projections no direct
gradient (the last cross-attention layer to run gets none at all). The denoising term is what trains them: the
values that remain attended to must carry the anchor, not the concept. Because K and V see only text, keeping the
keys and values of every other prompt's tokens keeps those prompts' images, which the preservation term does
cheaply, without running the denoiser. Only the LoRA factors train; the model is left exactly as it was.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..concepts.bench import Bench, load_bench
from ..concepts.prompts import (
    ConceptLike,
    ConceptPlan,
    neighbour_prompts,
    plan,
    preserve_prompts,
    resolve,
    substitute,
)
from ..errors import FmnPatchError
from ..families.base import Base
from ..families.threads import sized_threads
from ..format.header import PatchInfo
from ..format.patch import Patch
from .budget import offers_edit, resolved, spent
from .dataset import TrainingSet, encode_set, reference_latents
from .edit import start_factors
from .inversion import InversionConfig, LearnedTokens, learn_tokens
from .loop import subsample
from .lora import check_rank, lora_adapter
from .samples import warn_zero_start
from .steps import TrainReport, run_steps
from .train_config import (
    ETA,
    ETA_DEFAULT,
    PRESERVE,
    PRESERVE_DEFAULT,
    ROBUST_ROUNDS,
    TrainConfig,
    eta_of,
    preserve_of,
)

# TrainConfig and the step moved to train_config.py and steps.py; their names stay importable from here.
__all__ = [
    "ETA",
    "ETA_DEFAULT",
    "PRESERVE",
    "PRESERVE_DEFAULT",
    "ROBUST_ROUNDS",
    "TrainConfig",
    "TrainReport",
    "eta_of",
    "prepare",
    "preserve_of",
    "run_steps",
    "train_patch",
    "train_patch_with_inversion",
]


@sized_threads
def train_patch(
    base: Base,
    concepts: Sequence[ConceptLike],
    config: TrainConfig | None = None,
    *,
    categories: Sequence[str | None] | str | None = None,
    images: str | None = None,
    bench: Bench | None = None,
    progress: bool = True,
) -> Patch:
    """Train a patch that makes ``base`` forget ``concepts``; the base is left exactly as it was.

    ``concepts``: names (``circle``, ``circle=disc``) or ``Concept``s; ``categories`` (one for all, one per concept,
    None to look them up in the bench); ``images``: a folder of reference images of the single concept (default:
    drawn by the base model and cached).
    """
    patch, _ = _train(base, concepts, config or TrainConfig(), categories, images, bench, None, progress)
    return patch


@sized_threads
def train_patch_with_inversion(
    base: Base,
    concepts: Sequence[ConceptLike],
    config: TrainConfig | None = None,
    inversion: InversionConfig | None = None,
    *,
    categories: Sequence[str | None] | str | None = None,
    images: str | None = None,
    bench: Bench | None = None,
    progress: bool = True,
) -> tuple[Patch, list[LearnedTokens]]:
    """FMN's two stages: learn token embeddings of each concept from its reference images (textual inversion), then
    re-steer on prompts with the name and with the learned tokens. For concepts the base knows poorly by name.

    The embeddings cannot live in the patch file (stock diffusers refuses non-LoRA tensors there): save them beside
    it with ``LearnedTokens.save`` and load them with ``pipe.load_textual_inversion``.
    """
    config, inversion = config or TrainConfig(), inversion or InversionConfig()
    return _train(base, concepts, config, categories, images, bench, inversion, progress)


def _train(
    base: Base,
    concepts: Sequence[ConceptLike],
    config: TrainConfig,
    categories: Sequence[str | None] | str | None,
    images: str | None,
    bench: Bench | None,
    inversion: InversionConfig | None,
    progress: bool,
) -> tuple[Patch, list[LearnedTokens]]:
    if not concepts:
        raise FmnPatchError("no concept given; name at least one, e.g. fmnpatch train circle")
    check_rank(base, config.rank)
    bench = bench or load_bench(config.bench or base.bench)
    plans = [plan(c, bench, config.anchor) for c in resolve(concepts, bench, categories)]
    if images is not None and len(plans) != 1:
        raise FmnPatchError(
            "--images gives pictures of one concept; train one concept at a time with --images"
        )
    if config.robust_rounds and inversion is not None:
        raise FmnPatchError("--robust and --ti do not combine; train with one of them")
    if config.robust_rounds:
        base.family.require_robust()
    described = base.describe()
    config = resolved(config, offers_edit(base))  # the budget the start needs, where the caller left it
    budget = spent(config)
    started = time.perf_counter()
    report = TrainReport(seconds=0.0)
    batch, learned = prepare(base, plans, bench, config, images, inversion)
    report.spend("prepare", time.perf_counter() - started)
    tick = time.perf_counter()
    start = None
    if _starts_from_edit(base, config):  # the closed-form edit of the same concepts and anchors, same rank
        anchors = {pl.concept.name: pl.anchor for pl in plans}
        start = start_factors(base, [pl.concept for pl in plans], anchors, bench.name, config.rank)
    if start is None and config.init == "auto" and not offers_edit(base):
        warn_zero_start(budget.steps, budget.batch_size)
    if start is not None:
        report.spend("edit", time.perf_counter() - tick)
    if config.robust_rounds:
        from .robust import robust_rounds

        factors = robust_rounds(base, plans, batch, config, report, progress, start)
    else:
        with lora_adapter(
            base, config.rank, seed=config.seed, start=start, train_values=config.train_values
        ) as s:
            report.add(
                run_steps(s, batch, config, budget.steps * batch.concepts, progress), budget.batch_size
            )
            factors = s.factors()
    report.seconds = time.perf_counter() - started
    extra: dict[str, Any] = {
        "train_seconds": round(report.seconds, 3),
        "final_loss": report.losses[-1],
        "loss_terms": report.parts,
        "loss_curve": subsample(report.losses, 50),
        "seconds_per_step": round(statistics.median(report.step_seconds), 4),
        "cost": report.cost(),
        "start": "edit" if start is not None else "zero",
    }
    if inversion is not None:
        extra["inversion"] = {"tokens": [t.names for t in learned], "config": dataclasses.asdict(inversion)}
    info = PatchInfo(
        method=config.patch_method(inversion=inversion is not None),
        concepts=tuple(p.record for p in plans),
        base_model=described.model,
        base_revision=described.revision,
        base_hash=described.hash,
        architecture=described.architecture,
        config={
            **dataclasses.asdict(config),
            "bench": bench.name,
            "anchors": {p.concept.name: p.anchor for p in plans},
        },
        extra=extra,
    )
    return Patch(factors, info, base.family.adapters.component), learned


# --------------------------------------------------------------------------------------------- preparation
def prepare(
    base: Base,
    plans: list[ConceptPlan],
    bench: Bench,
    config: TrainConfig,
    images: str | None,
    inversion: InversionConfig | None = None,
) -> tuple[TrainingSet, list[LearnedTokens]]:
    """The training set of ``plans``: with ``inversion``, also each prompt rewritten with learned tokens."""
    prompts = [p for pl in plans for p in pl.prompts]
    anchors = [p for pl in plans for p in pl.anchor_prompts]
    words = [pl.concept.name for pl in plans for _ in pl.prompts]  # what to find in each prompt
    latents, latent_prompt = reference_latents(
        base,
        prompts,
        config.images_per_prompt,
        steps=config.image_steps,
        guidance=config.image_guidance,
        images=images,
        size=config.train_size,
    )
    family = base.family
    erased = [pl.concept for pl in plans]
    banned = [family.text.concept_ids(w) for c in erased for w in c.names]
    keep = preserve_prompts(
        bench, erased, last=[*config.preserve_extra, *anchors], names=lambda p: _names_any(family, p, banned)
    )
    etas = [eta_of(config, pl.concept.category) for pl in plans for _ in pl.prompts]
    w_p = preserve_of(config, *(pl.concept.category for pl in plans))
    near = neighbour_prompts(bench, erased)
    w_n = 1.0 if config.neighbour_weight is None else config.neighbour_weight  # 0 stays 0
    if inversion is None:
        batch = encode_set(
            base, prompts, anchors, words, latents, latent_prompt, keep,
            after=config.after, etas=etas, preserve_weight=w_p, near=near, neighbour_weight=w_n,
            padding=config.preserve_padding,
        )  # fmt: skip
        return batch, []
    owner = torch.tensor([k for k, pl in enumerate(plans) for _ in pl.prompts])
    learned = [
        learn_tokens(
            base, latents[owner[latent_prompt] == k], _token(pl.concept.name), pl.concept.name, inversion
        )
        for k, pl in enumerate(plans)
    ]
    names = [n for t in learned for n in t.names]
    with family.text.added_tokens(names, torch.cat([t.embeddings for t in learned])):
        # The pipeline's encode_prompt expands "<t>" into "<t> <t>_1 ..." itself (diffusers' multi-vector
        # convention), so the prompts name the first token only; the masks read the expanded prompts.
        ti_prompts = [
            substitute(p, w, learned[int(k)].token) for p, w, k in zip(prompts, words, owner, strict=True)
        ]
        seen = [
            substitute(p, w, learned[int(k)].words) for p, w, k in zip(prompts, words, owner, strict=True)
        ]
        n = len(prompts)
        batch = encode_set(
            base,
            prompts + ti_prompts,
            anchors + anchors,
            words + [learned[int(k)].words for k in owner],
            torch.cat([latents, latents]),
            torch.cat([latent_prompt, latent_prompt + n]),
            keep,
            after=config.after,
            etas=etas + etas,
            preserve_weight=w_p,
            seen=prompts + seen,
            near=near,
            neighbour_weight=w_n,
            padding=config.preserve_padding,
        )
    return dataclasses.replace(batch, concepts=len(plans)), learned


def _names_any(family: Any, prompt: str, banned: list[tuple[int, ...]]) -> bool:
    """Whether ``prompt``'s tokens contain one of the ``banned`` token sequences."""
    from ..families.tokens import find_subsequence

    ids = family.text.token_ids(prompt)
    return any(find_subsequence(ids, sub) for sub in banned)


def _token(name: str) -> str:
    return "<fmn-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ">"


def _starts_from_edit(base: Base, config: TrainConfig) -> bool:
    """Whether training starts from the closed-form edit: ``init`` edit, or auto where the family offers it and the
    run is not ``--robust`` (robust rounds hold better from zero: BENCHMARKS.md "Training defaults")."""
    return config.init == "edit" if config.init != "auto" else offers_edit(base) and not config.robust_rounds
