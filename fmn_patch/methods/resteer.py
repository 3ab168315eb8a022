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

import contextlib
import dataclasses
import re
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .. import values
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
from ..families.checkpointing import gradient_checkpointing
from ..families.threads import sized_threads
from ..format.header import PatchInfo
from ..format.patch import Patch
from ..values import MAX_BATCH, MAX_RANK, MAX_STEPS
from .budget import offers_edit, resolved, spent
from .dataset import TrainingSet, encode_set, reference_latents
from .edit import start_factors
from .inversion import InversionConfig, LearnedTokens, learn_tokens
from .loop import LoopConfig, LoopReport, optimise, subsample
from .lora import LoraSession, check_rank, lora_adapter, preservation_loss
from .losses import resteer_loss
from .samples import Samples, draw, guided_targets, sample_pool, warn_zero_start

#: Negative guidance per category when TrainConfig.eta is None; other categories get ETA_DEFAULT.
ETA: dict[str, float] = {"style": 1.0}
ETA_DEFAULT = 2.0
#: The number of rounds ``fmnpatch train --robust`` is benchmarked with (bench/train_timing.py, robust_quality.py).
ROBUST_ROUNDS = 4
#: Preservation weight per category when TrainConfig.preserve_weight is None; others get PRESERVE_DEFAULT.
PRESERVE: dict[str, float] = {"style": 100.0}
PRESERVE_DEFAULT = 30.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the patch. Same config, inputs and seed give the same tensors."""

    rank: int = 4  # LoRA rank of each key/value factor pair
    # Optimisation steps per concept (a patch of N concepts trains N x steps; --robust splits them into its rounds)
    # of batch_size (prompt, reference latent) pairs; 0: the start's budget (methods/budget.py): 15 x 4 from the
    # closed-form edit (UNet), 150 x 8 from zero (SD3/Flux: no closed form). FMN's recipe is 35 x 1 at 512 px.
    steps: int = 0
    lr: float = 3e-3  # AdamW learning rate of the LoRA factors
    batch_size: int = 0
    seed: int = 0
    anchor: str | None = None  # what the concepts are redirected to; None: each concept's, else the bench's
    # Negative guidance of the denoising target, away from the concept (0: plain redirect to the anchor); None: per
    # category (ETA; why each value: BENCHMARKS.md "Training defaults").
    eta: float | None = None
    resteer_weight: float = 1.0  # w_r, attention mass at the concept's positions
    # w_d, guided denoising target (trains the values); noise MSE is small, hence 100
    denoise_weight: float = 100.0
    # w_p, keys/values of the preserve prompts' tokens; None: per category (PRESERVE), the smallest of the patch's
    # concepts, which each concept's erasure withstands (BENCHMARKS.md "Training defaults").
    preserve_weight: float | None = None
    # Extra factor on the preservation rows of the bench's other concepts of an erased one's category (its neighbours,
    # which the patch moves most: the edit's ``neighbour_weight``); None: the start's budget (methods/budget.py).
    neighbour_weight: float | None = None
    # The preservation term reads each preserve prompt's padding slots after EOS too (False: BOS .. EOS, as the edit
    # does; UNet only); None: False where the family has true-length text states. BENCHMARKS.md "Neighbour weight".
    preserve_padding: bool | None = None
    after: bool = True  # the re-steering loss also reads the positions after the concept (through EOS)
    # reference images drawn by the base per concept prompt (when no folder is given)
    images_per_prompt: int = 2
    image_steps: int = 20  # sampler steps for drawing reference images
    image_guidance: float = 5.0
    max_grad_norm: float = 1.0
    preserve_extra: tuple[str, ...] = ()  # more prompts to keep, e.g. from a preserve file
    bench: str | None = None  # ConceptBench of categories, templates, anchors, preserve set; None: the base's
    # Start from the closed-form edit of the same concepts and anchors at the same rank (it already meets the direct
    # bars; training makes the values carry the anchor and, with --robust, holds against inversion), or from zero;
    # auto: the edit where the family offers it (UNet bases), else zero (MMDiT: no closed form).
    init: Literal["auto", "zero", "edit"] = "auto"
    train_values: bool = True  # False: freeze the value projections' factors (an ablation: keys alone)
    robust_rounds: int = 0  # adversarial re-steering (--robust): rounds of train-then-attack; 0 = off
    # Each inner attack against the patch as it stands: inversion (Concept Inversion through the denoiser) or kv
    # (key/value inversion, no denoiser: cheaper); BENCHMARKS.md "Training defaults".
    robust_attack: Literal["kv", "inversion"] = "inversion"
    robust_attack_steps: int = 100
    robust_attack_batch: int = 2
    robust_attack_lr: float = 5e-3
    # What a step costs (see methods/samples.py). pool: fixed (latent, t, noise) samples whose guided targets are
    # computed once, before the first step, at most as many as the steps draw (0: every step draws fresh samples
    # and runs the base twice for them); None: the start's budget (32 from the edit, 256 from zero).
    pool: int | None = None
    # The image side (px) the steps run at when the base's is larger: reference latents area-downsampled. The keys
    # and values a patch changes see only the prompt; SD-1.5 steps at 256 px cost about a fifth of 512 px ones.
    train_size: int | None = 256
    # Gradient checkpointing of the denoiser: the forward recomputed in backward, less memory for more compute.
    checkpointing: bool = True
    # Samples per denoiser pass: a larger batch runs in chunks whose gradients add up to the batch's (same loss; one
    # chunk's activations alive at a time, BENCHMARKS.md "Training defaults").
    micro_batch: int = 2

    def patch_method(self, *, inversion: bool = False) -> str:
        """The header's ``method``: resteer, resteer+robust, or resteer+ti (textual inversion first)."""
        return "resteer+ti" if inversion else "resteer+robust" if self.robust_rounds else "resteer"

    def __post_init__(self) -> None:
        values.whole(self.rank, "rank", 1, MAX_RANK, example=4)
        for name in ("steps", "image_steps"):
            values.whole(getattr(self, name), name, int(name != "steps"), MAX_STEPS, example=150)
        for name in ("batch_size", "images_per_prompt", "micro_batch"):
            values.whole(getattr(self, name), name, int(name != "batch_size"), MAX_BATCH, example=8)
        values.whole(self.robust_rounds, "robust_rounds", 0, 1000, example=4)
        values.whole(self.robust_attack_steps, "robust_attack_steps", 1, MAX_STEPS, example=100)
        values.seed(self.seed)
        if self.init not in ("auto", "zero", "edit"):
            raise FmnPatchError(f"init={self.init!r} is not one of auto, zero, edit")
        values.number(self.lr, "lr", 0, 1, above=True, example="3e-3")
        values.number(self.max_grad_norm, "max_grad_norm", 0, 1e6, above=True, example="1.0")
        values.whole(self.robust_attack_batch, "robust_attack_batch", 1, MAX_BATCH, example=4)
        if self.pool is not None:
            values.whole(self.pool, "pool", 0, MAX_BATCH, example=32)
        if self.train_size is not None:
            values.whole(self.train_size, "train_size", 8, 16_384, example=256)
        if self.robust_attack not in ("kv", "inversion"):
            raise FmnPatchError(f"robust_attack={self.robust_attack!r} is not one of kv, inversion")
        values.number(self.robust_attack_lr, "robust_attack_lr", 0, 1, above=True, example="1e-2")
        for name in (
            "eta", "resteer_weight", "denoise_weight", "preserve_weight", "neighbour_weight", "image_guidance"
        ):  # fmt: skip
            if getattr(self, name) is not None:
                values.number(getattr(self, name), name, 0, 1e6)
        object.__setattr__(self, "preserve_extra", tuple(self.preserve_extra))


@dataclass
class TrainReport:
    """What happened during training."""

    seconds: float
    losses: list[float] = field(default_factory=list)  # total loss per step
    parts: dict[str, float] = field(default_factory=dict)  # last step's loss terms
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimisation step
    # where the time went: seconds and denoiser samples by phase (prepare, edit, pool, steps, attacks)
    phases: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)

    def add(self, loop: LoopReport, batch_size: int) -> None:
        self.losses += loop.losses
        self.step_seconds += loop.step_seconds
        self.parts = loop.parts
        self.spend("steps", sum(loop.step_seconds), len(loop.step_seconds) * batch_size)
        for phase, seconds in loop.phases.items():
            self.spend(phase, seconds, loop.samples.get(phase, 0))

    def spend(self, phase: str, seconds: float, samples: int = 0) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds
        if samples:
            self.samples[phase] = self.samples.get(phase, 0) + samples

    def cost(self) -> dict[str, Any]:
        """Seconds and samples per phase, as the patch header records them."""
        return {
            "seconds": {k: round(v, 3) for k, v in self.phases.items()},
            "samples": dict(self.samples),
        }


@sized_threads
def train_patch(
    base: Base | Any,
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
    base: Base | Any,
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
    return Patch(factors, info, base.family.component), learned


# ---------------------------------------------------------------------------------------------- the step
def run_steps(
    session: LoraSession, batch: TrainingSet, config: TrainConfig, steps: int, progress: bool
) -> LoopReport:
    """Optimise the session's adapter on ``batch`` for ``steps`` steps of the three-term loss."""
    family = session.base.family
    budget = spent(resolved(config, offers_edit(session.base)))  # correction leaves its pool to the method
    maps: list[torch.Tensor] = []
    # with gradient checkpointing the forward runs again in backward: read the first one only
    recording = [False]

    def sink(_name: str, probs: torch.Tensor) -> None:
        if recording[0]:
            maps.append(probs)

    guided = config.denoise_weight > 0
    chunk = min(config.micro_batch, budget.batch_size)
    tick = time.perf_counter()
    size = min(budget.pool, steps * budget.batch_size)  # never more targets than the steps can draw
    pool = sample_pool(session, batch, size, seed=config.seed, chunk=chunk, targets=guided) if size else None
    pool_seconds = time.perf_counter() - tick

    def terms(s: Samples, share: float, keep: bool) -> dict[str, torch.Tensor]:
        """The loss terms of samples ``s``, those that average over samples weighed by ``share`` of the batch."""
        cond = batch.concept.select(s.prompt)
        parts: dict[str, torch.Tensor] = {}
        maps.clear()
        recording[0] = config.resteer_weight > 0
        try:
            pred = family.denoise(s.x_t, s.t, cond)
        finally:
            recording[0] = False
        if config.resteer_weight > 0:
            parts["resteer"] = resteer_loss(maps, batch.masks[s.prompt].to(s.x_t.device)) * share
        if guided:
            assert s.target is not None
            parts["denoise"] = F.mse_loss(pred.float(), s.target.float()) * share
        if keep and batch.preserve_weight > 0:
            parts["preserve"] = preservation_loss(
                session, batch.preserve, s.x_t.device, batch.neighbours, batch.neighbour_weight
            )
        return parts

    def step(gen: torch.Generator) -> dict[str, torch.Tensor] | Iterator[dict[str, torch.Tensor]]:
        if pool is not None:
            s = pool.select(torch.randint(len(pool), (budget.batch_size,), generator=gen))
        else:
            s = draw(family, batch, budget.batch_size, gen)
            if guided:
                s.target = guided_targets(session, batch, s, chunk)
        if len(s) <= chunk:
            return terms(s, 1.0, True)
        # in chunks: the preservation term (no samples in it) comes with the first one
        starts = range(0, len(s), chunk)
        return (terms(s.select(slice(i, i + chunk)), min(chunk, len(s) - i) / len(s), i == 0) for i in starts)

    weights = {
        "resteer": config.resteer_weight,
        "denoise": config.denoise_weight,
        "preserve": batch.preserve_weight,
    }
    loop = LoopConfig(
        steps=steps,
        lr=config.lr,
        seed=config.seed,
        max_grad_norm=config.max_grad_norm,
        desc="training",
        hint="lower --lr or the loss weights",
    )
    # The capture stays on through backward (a checkpointed forward is recomputed there, with the same processors);
    # without re-steering the denoiser keeps its fast attention everywhere (concept correction).
    capture = family.capture_attention(sink) if config.resteer_weight > 0 else contextlib.nullcontext()
    with gradient_checkpointing(family, config.checkpointing), capture:
        report = optimise(session.params, step, loop, weights=weights, progress=progress)
    if pool is not None:
        report.phases["pool"], report.samples["pool"] = pool_seconds, len(pool)
    return report


# --------------------------------------------------------------------------------------------- preparation
def eta_of(config: TrainConfig, category: str) -> float:
    """The negative guidance for a concept of ``category``: the config's, else the category's default."""
    return config.eta if config.eta is not None else ETA.get(category, ETA_DEFAULT)


def preserve_of(config: TrainConfig, *categories: str) -> float:
    """The preservation weight of a patch of concepts of ``categories``: the config's, else the smallest of theirs."""
    if config.preserve_weight is not None:
        return config.preserve_weight
    return min(PRESERVE.get(category, PRESERVE_DEFAULT) for category in categories)


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
    banned = [family.concept_ids(w) for c in erased for w in c.names]
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
    with family.added_tokens(names, torch.cat([t.embeddings for t in learned])):
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

    ids = family.token_ids(prompt)
    return any(find_subsequence(ids, sub) for sub in banned)


def _token(name: str) -> str:
    return "<fmn-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ">"


def _starts_from_edit(base: Base, config: TrainConfig) -> bool:
    """Whether training starts from the closed-form edit: ``init`` edit, or auto where the family offers it and the
    run is not ``--robust`` (robust rounds hold better from zero: BENCHMARKS.md "Training defaults")."""
    return config.init == "edit" if config.init != "auto" else offers_edit(base) and not config.robust_rounds
