"""``train_patch``: Forget-Me-Not attention re-steering, trained as a LoRA patch on ``attn2.to_k`` / ``attn2.to_v``.

One step, for a batch of the concepts' prompts and noised reference latents x_t:

    loss = w_r * resteer(attention at the concept's positions)                 # FMN: pixels stop looking at it
         + w_d * || eps'(x_t, concept) - [eps(x_t, anchor) - eta (eps(x_t, concept) - eps(x_t, anchor))] ||^2
         + w_p * || K'/V'(preserve tokens) - K/V(preserve tokens) ||^2         # nothing else moves

The re-steering term reads attention maps, which depend on Q and K only: it gives ``to_v`` no direct gradient
(the last cross-attention layer to run gets none at all). The denoising term is what trains ``to_v``: the values
that remain attended to must carry the anchor, not the concept. Because K and V see only text, keeping the keys
and values of every other prompt's tokens keeps those prompts' images, which the preservation term does cheaply,
without running the UNet. Only the LoRA factors train; the rest of the model is frozen and left as it was.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .attention import capture_attention
from .base import describe_base
from .conceptbench import Bench, load_bench
from .encoding import Conditioning, encode
from .errors import FmnPatchError
from .inversion import InversionConfig, LearnedTokens, added_tokens, learn_tokens
from .loss import guided_target, preservation, resteer_loss
from .patch import Patch, PatchInfo
from .prompts import ConceptPlan, plan, preserve_prompts, resolve, substitute
from .references import encode_images, folder_images, generated_latents, pixel_size
from .targets import TARGET_REGEX, is_target
from .tokens import place

ADAPTER = "fmn_train"
#: Negative guidance per category when TrainConfig.eta is None; other categories get ETA_DEFAULT.
ETA: dict[str, float] = {"style": 1.0}
ETA_DEFAULT = 2.0
#: Preservation weight per category when TrainConfig.preserve_weight is None; others get PRESERVE_DEFAULT.
PRESERVE: dict[str, float] = {"style": 100.0}
PRESERVE_DEFAULT = 30.0


@dataclass
class TrainConfig:
    """Everything that decides the patch. Same config, inputs and seed give the same tensors."""

    rank: int = 4  # LoRA rank of each to_k / to_v factor pair
    steps: int = 150  # optimisation steps per concept: a patch of N concepts trains N x steps
    lr: float = 3e-3  # AdamW learning rate of the LoRA factors
    batch_size: int = 8  # (prompt, reference latent) pairs per step
    seed: int = 0
    anchor: str | None = (
        None  # what the concept is redirected to; None: the bench's neutral word for its category
    )
    # Negative guidance of the denoising target (0: plain redirect to the anchor); None: per category (ETA). An anchor
    # like the toy "shape" or "person" draws every shape or person, the erased one included: at 1, cross kept 8-12%
    # of its images over seeds, at 2, 0%. A style's anchor ("plain") never draws the style, and at 2 erasing
    # checkered cost the other styles 9% of their accuracy: styles keep 1.
    eta: float | None = None
    resteer_weight: float = 1.0  # w_r, attention mass at the concept's positions
    denoise_weight: float = (
        100.0  # w_d, guided denoising target (trains to_v); MSE of noise is small, hence 100
    )
    # w_p, keys/values of the preserve prompts' tokens; None: per category (PRESERVE), the largest of the patch's
    # concepts. Erasing a style (a fill every shape can wear) reaches everything: at 30 checkered cost the other
    # concepts 7% of their accuracy, at 100 under 3%; objects and identities erase more cleanly at 30.
    preserve_weight: float | None = None
    after: bool = True  # the re-steering loss also reads the positions after the concept (through EOS)
    images_per_prompt: int = (
        2  # reference images drawn by the base per concept prompt (when no folder is given)
    )
    image_steps: int = 20  # sampler steps for drawing reference images
    image_guidance: float = 5.0
    max_grad_norm: float = 1.0
    preserve_extra: tuple[str, ...] = ()  # more prompts to keep, e.g. from a preserve file
    bench: str = "toy"  # ConceptBench that supplies categories, templates and the default preserve set
    init: Literal["zero", "edit"] = "zero"  # start from zero, or from the closed-form edit (the hybrid)
    train_values: bool = True  # False: freeze the to_v factors (an ablation: keys alone)
    robust_rounds: int = 0  # adversarial re-steering (--robust): rounds of train-then-attack; 0 = off
    robust_attack_steps: int = 100  # textual-inversion steps of each inner attack

    def __post_init__(self) -> None:
        for name in ("rank", "steps", "batch_size", "images_per_prompt", "image_steps"):
            if getattr(self, name) < 1:
                raise FmnPatchError(f"{name}={getattr(self, name)} must be at least 1")
        if self.init not in ("zero", "edit"):
            raise FmnPatchError(f"init={self.init!r} is not one of zero, edit")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FmnPatchError(f"lr={self.lr} must be a positive number, e.g. 3e-3")
        for name in ("robust_rounds", "robust_attack_steps"):
            if getattr(self, name) < 0:
                raise FmnPatchError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("eta", "resteer_weight", "denoise_weight", "preserve_weight"):
            if (getattr(self, name) or 0) < 0:
                raise FmnPatchError(f"{name}={getattr(self, name)} must be >= 0")


@dataclass
class TrainReport:
    """What happened during training."""

    seconds: float
    losses: list[float] = field(default_factory=list)  # total loss per step
    parts: dict[str, float] = field(default_factory=dict)  # last step's loss terms
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimisation step


def train_patch(
    pipe: Any,
    concepts: Sequence[str],
    config: TrainConfig | None = None,
    *,
    categories: Sequence[str | None] | None = None,
    images: str | None = None,
    bench: Bench | None = None,
    progress: bool = True,
) -> Patch:
    """Train a patch that makes ``pipe`` forget ``concepts``; the pipeline is left exactly as it was.

    ``categories`` (one per concept, None to look it up in the bench) and ``images`` (a folder of reference images
    of the single concept; default: drawn by the base model and cached) are optional.
    """
    patch, _ = _train(pipe, concepts, config or TrainConfig(), categories, images, bench, None, progress)
    return patch


def train_patch_with_inversion(
    pipe: Any,
    concepts: Sequence[str],
    config: TrainConfig | None = None,
    inversion: InversionConfig | None = None,
    *,
    categories: Sequence[str | None] | None = None,
    images: str | None = None,
    bench: Bench | None = None,
    progress: bool = True,
) -> tuple[Patch, list[LearnedTokens]]:
    """FMN's two stages: learn token embeddings of each concept from its reference images (textual inversion), then
    re-steer on prompts with the name and with the learned tokens. For concepts the base knows poorly by name.

    The embeddings cannot live in the patch file (stock diffusers refuses non-LoRA tensors there): save them beside
    it with ``LearnedTokens.save`` and load them with ``pipe.load_textual_inversion``.
    """
    return _train(
        pipe,
        concepts,
        config or TrainConfig(),
        categories,
        images,
        bench,
        inversion or InversionConfig(),
        progress,
    )


def _train(
    pipe: Any,
    concepts: Sequence[str],
    config: TrainConfig,
    categories: Sequence[str | None] | None,
    images: str | None,
    bench: Bench | None,
    inversion: InversionConfig | None,
    progress: bool,
) -> tuple[Patch, list[LearnedTokens]]:
    if not concepts:
        raise FmnPatchError("no concept given; name at least one, e.g. fmnpatch train circle")
    bench = bench or load_bench(config.bench)
    categories = list(categories) if categories else [None] * len(concepts)
    if len(categories) != len(concepts):
        raise FmnPatchError(f"got {len(categories)} categories for {len(concepts)} concepts; give one each")
    plans = [
        plan(resolve(n, bench, c), bench, config.anchor) for n, c in zip(concepts, categories, strict=True)
    ]
    if images is not None and len(plans) != 1:
        raise FmnPatchError(
            "--images gives pictures of one concept; train one concept at a time with --images"
        )
    if config.robust_rounds and inversion is not None:
        raise FmnPatchError("--robust and --ti do not combine; train with one of them")
    base = describe_base(pipe)
    started = time.perf_counter()
    batch, learned = _prepare(pipe, plans, bench, config, images, inversion)
    start = _edit_factors(pipe, plans, config) if config.init == "edit" else None
    if config.robust_rounds:
        report = _robust(pipe, plans, batch, config, progress, start)
    else:
        report = optimise(pipe, batch, config, progress, start)
    factors = take_factors(pipe)
    report.seconds = time.perf_counter() - started
    extra: dict[str, Any] = {
        "train_seconds": round(report.seconds, 3),
        "final_loss": report.losses[-1],
        "loss_terms": report.parts,
        "loss_curve": _subsample(report.losses, 50),
        "seconds_per_step": round(statistics.median(report.step_seconds), 4),
    }
    if inversion is not None:
        extra["inversion"] = {"tokens": [t.names for t in learned], "config": dataclasses.asdict(inversion)}
    info = PatchInfo(
        method="resteer+ti"
        if inversion is not None
        else "resteer+robust"
        if config.robust_rounds
        else "resteer",
        concepts=tuple(p.record for p in plans),
        base_model=base.model,
        base_revision=base.revision,
        base_hash=base.hash,
        architecture=base.architecture,
        config={**dataclasses.asdict(config), "anchors": {p.concept.name: p.anchor for p in plans}},
        extra=extra,
    )
    return Patch(factors, info), learned


# --------------------------------------------------------------------------------------------- preparation
@dataclass
class TrainingSet:
    """Everything the loop samples from, prepared once (``optimise`` trains on it; concept correction builds its
    own, with variant prompts as anchors)."""

    concept: Conditioning  # (P, T, D) the concepts' prompts
    anchor: Conditioning  # (P, T, D) the same prompts with the anchor
    masks: torch.Tensor  # (P, T) positions the re-steering loss reads
    latents: torch.Tensor  # (L, C, h, w) reference latents
    latent_prompt: torch.Tensor  # (L,) which prompt each latent belongs to
    preserve: torch.Tensor  # (M, D) encoder states of the preserve prompts' tokens
    concepts: int  # how many concepts the patch forgets
    eta: torch.Tensor  # (P,) negative guidance of each prompt's denoising target
    preserve_weight: float  # w_p for this patch


def _prepare(
    pipe: Any,
    plans: list[ConceptPlan],
    bench: Bench,
    config: TrainConfig,
    images: str | None,
    inversion: InversionConfig | None = None,
) -> tuple[TrainingSet, list[LearnedTokens]]:
    prompts = [p for pl in plans for p in pl.prompts]
    anchors = [p for pl in plans for p in pl.anchor_prompts]
    words = [pl.concept.name for pl in plans for _ in pl.prompts]  # what to find in each prompt
    latents, latent_prompt = reference_latents(pipe, prompts, config, images)
    keep = preserve_prompts(bench, [pl.concept for pl in plans], [*config.preserve_extra, *anchors])
    etas = [eta_of(config, pl.concept.category) for pl in plans for _ in pl.prompts]
    w_p = max(preserve_of(config, pl.concept.category) for pl in plans)
    if inversion is None:
        return _encode_batch(
            pipe, prompts, anchors, words, latents, latent_prompt, keep, config, etas, w_p
        ), []
    owner = torch.tensor([k for k, pl in enumerate(plans) for _ in pl.prompts])
    learned = [
        learn_tokens(
            pipe, latents[owner[latent_prompt] == k], _token(pl.concept.name), pl.concept.name, inversion
        )
        for k, pl in enumerate(plans)
    ]
    names = [n for t in learned for n in t.names]
    init = torch.cat([t.embeddings for t in learned])
    with added_tokens(pipe, names, init):
        # The pipeline's encode_prompt expands "<t>" into "<t> <t>_1 ..." itself (diffusers' multi-vector
        # convention), so the prompts name the first token only; the masks read the expanded prompts.
        ti_prompts = [
            substitute(p, w, learned[int(k)].token) for p, w, k in zip(prompts, words, owner, strict=True)
        ]
        seen = [
            substitute(p, w, learned[int(k)].words) for p, w, k in zip(prompts, words, owner, strict=True)
        ]
        n = len(prompts)
        batch = _encode_batch(
            pipe,
            prompts + ti_prompts,
            anchors + anchors,
            words + [learned[int(k)].words for k in owner],
            torch.cat([latents, latents]),
            torch.cat([latent_prompt, latent_prompt + n]),
            keep,
            config,
            etas + etas,
            w_p,
            seen=prompts + seen,
        )
    return dataclasses.replace(batch, concepts=len(plans)), learned


def reference_latents(
    pipe: Any, prompts: list[str], config: TrainConfig, images: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference latents (L, C, h, w) and the prompt each belongs to (L,)."""
    if images is not None:
        latents = encode_images(pipe, folder_images(images, pixel_size(pipe)))
        return latents, torch.arange(len(latents)) % len(prompts)
    seeds = list(range(config.images_per_prompt))
    latents = generated_latents(
        pipe, prompts, seeds, steps=config.image_steps, guidance=config.image_guidance
    )
    return latents, torch.arange(len(prompts)).repeat_interleave(len(seeds))


def _encode_batch(
    pipe: Any,
    prompts: list[str],
    anchors: list[str],
    words: list[str],
    latents: torch.Tensor,
    latent_prompt: torch.Tensor,
    keep: list[str],
    config: TrainConfig,
    etas: list[float],
    preserve_weight: float,
    seen: list[str] | None = None,
) -> TrainingSet:
    """``seen``: the prompts as the tokenizer sees them after the pipeline's own rewriting (default: ``prompts``)."""
    masks = _masks(pipe.tokenizer, seen or prompts, words, config.after)
    preserve = encode(pipe, keep).states.flatten(0, 1)  # (M, D): every token of every preserve prompt
    concepts = len(dict.fromkeys(words))  # distinct words; _prepare corrects it for learned tokens
    return TrainingSet(
        encode(pipe, prompts),
        encode(pipe, anchors),
        masks,
        latents,
        latent_prompt,
        preserve,
        concepts,
        torch.tensor(etas, dtype=torch.float32),
        preserve_weight,
    )


def preserve_of(config: TrainConfig, category: str) -> float:
    """The preservation weight for a concept of ``category``: the config's, else the category's default."""
    return (
        config.preserve_weight
        if config.preserve_weight is not None
        else PRESERVE.get(category, PRESERVE_DEFAULT)
    )


def eta_of(config: TrainConfig, category: str) -> float:
    """The negative guidance for a concept of ``category``: the config's, else the category's default."""
    return config.eta if config.eta is not None else ETA.get(category, ETA_DEFAULT)


def _masks(tokenizer: Any, prompts: list[str], words: list[str], after: bool) -> torch.Tensor:
    """(P, T) 1 at each prompt's concept positions (and, with ``after``, the positions after it)."""
    masks = torch.zeros(len(prompts), tokenizer.model_max_length)
    for i, (prompt, word) in enumerate(zip(prompts, words, strict=True)):
        masks[i, list(place(tokenizer, prompt, word).positions(after=after))] = 1.0
    return masks


def _token(name: str) -> str:
    return "<fmn-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ">"


# ---------------------------------------------------------------------------------------------- the loop
def _edit_factors(
    pipe: Any, plans: list[ConceptPlan], config: TrainConfig
) -> dict[str, tuple[torch.Tensor, ...]]:
    """The closed-form edit of the same concepts and anchors at the same rank: the hybrid's starting point."""
    from .edit import EditConfig, edit_patch

    anchors = {pl.concept.name: pl.anchor for pl in plans}
    patch = edit_patch(
        pipe, [pl.concept.name for pl in plans], anchor=anchors, config=EditConfig(rank=config.rank)
    )
    return dict(patch.factors)


def optimise(
    pipe: Any,
    batch: TrainingSet,
    config: TrainConfig,
    progress: bool,
    start: dict[str, tuple[torch.Tensor, ...]] | None = None,
) -> TrainReport:
    from peft import LoraConfig, set_peft_model_state_dict

    unet = pipe.unet
    if ADAPTER in (getattr(unet, "peft_config", None) or {}):
        unet.delete_adapters(ADAPTER)
    unet.requires_grad_(False)
    torch.manual_seed(config.seed)
    unet.add_adapter(
        LoraConfig(
            r=config.rank, lora_alpha=config.rank, target_modules=TARGET_REGEX, init_lora_weights=True
        ),
        adapter_name=ADAPTER,
    )
    unet.set_adapters([ADAPTER])
    if start is not None:  # alpha == r, so the adapter's scale is 1 and the factors load as they are
        state = {f"{m}.lora_{k}.weight": t for m, (a, b) in start.items() for k, t in (("A", a), ("B", b))}
        set_peft_model_state_dict(unet, state, adapter_name=ADAPTER)
    lora = {n: m for n, m in unet.named_modules() if is_target(n) and hasattr(m, "get_base_layer")}
    if not config.train_values:
        for name, p in unet.named_parameters():
            if ".to_v.lora_" in name:
                p.requires_grad_(False)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(config.seed)
    scheduler = pipe.scheduler
    num_t = int(scheduler.config.num_train_timesteps)
    report = TrainReport(seconds=0.0)
    maps: list[torch.Tensor] = []

    def sink(_name: str, probs: torch.Tensor) -> None:
        maps.append(probs)

    steps = config.steps * batch.concepts  # each concept gets the single-concept budget
    bar = tqdm(range(steps), desc="train", disable=not progress, file=sys.stderr, leave=False)
    was_training = unet.training
    unet.train()
    try:
        for step in bar:
            tick = time.perf_counter()
            pick = torch.randint(len(batch.latents), (config.batch_size,), generator=gen)
            idx = batch.latent_prompt[pick]
            x0 = batch.latents[pick].to(unet.device, unet.dtype)
            t = torch.randint(0, num_t, (config.batch_size,), generator=gen).to(unet.device)
            noise = torch.randn(x0.shape, generator=gen).to(x0)
            x_t = scheduler.add_noise(x0, noise, t)
            cond = batch.concept.select(idx)
            parts: dict[str, torch.Tensor] = {}
            if config.denoise_weight > 0:
                with torch.no_grad():
                    unet.disable_adapters()
                    both = cond.cat(batch.anchor.select(idx))
                    eps_c, eps_a = unet(
                        torch.cat([x_t, x_t]), torch.cat([t, t]), **both.unet_kwargs()
                    ).sample.chunk(2)
                    unet.enable_adapters()
                target = guided_target(eps_c, eps_a, batch.eta[idx].to(eps_c).view(-1, 1, 1, 1))
            maps.clear()
            if config.resteer_weight > 0:
                with capture_attention(unet, sink):
                    pred = unet(x_t, t, **cond.unet_kwargs()).sample
                parts["resteer"] = resteer_loss(maps, batch.masks[idx].to(x_t.device))
            else:  # no attention maps to read (concept correction): the UNet keeps its fast path
                pred = unet(x_t, t, **cond.unet_kwargs()).sample
            if config.denoise_weight > 0:
                parts["denoise"] = F.mse_loss(pred.float(), target.float())
            if batch.preserve_weight > 0:
                parts["preserve"] = _preservation(lora, batch.preserve.to(x_t.device, x_t.dtype))
            loss = (
                config.resteer_weight * parts.get("resteer", torch.zeros(()))
                + config.denoise_weight * parts.get("denoise", torch.zeros(()))
                + batch.preserve_weight * parts.get("preserve", torch.zeros(()))
            )
            if not torch.isfinite(loss):
                raise FmnPatchError(
                    f"training diverged at step {step} (loss {float(loss)}); nothing was written: lower --lr "
                    f"(now {config.lr}) or the loss weights"
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimiser.step()
            report.step_seconds.append(time.perf_counter() - tick)
            report.losses.append(loss.item())
            report.parts = {k: round(v.item(), 6) for k, v in parts.items()}
            bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v.item():.3f}" for k, v in parts.items()})
    except BaseException:
        _drop_adapter(unet)
        raise
    finally:
        unet.train(was_training)
        bar.close()
    return report


def _robust(
    pipe: Any,
    plans: list[ConceptPlan],
    batch: TrainingSet,
    config: TrainConfig,
    progress: bool,
    start: dict[str, tuple[torch.Tensor, ...]] | None,
) -> TrainReport:
    """Adversarial re-steering, in the spirit of AdvUnlearn / Receler: the steps are split into rounds; after each
    round but the last, an inner attack (Concept Inversion: a new token learned by textual inversion on the
    concept's reference images, against the patch as it stands) finds a prompt that brings the concept back, and
    the concept's prompts written with that token join the erase set of the next rounds. Same LoRA targets."""
    from .apply import apply_patches, remove_patches

    per_round = dataclasses.replace(config, steps=max(1, math.ceil(config.steps / config.robust_rounds)))
    owner = torch.tensor([k for k, pl in enumerate(plans) for _ in pl.prompts])[batch.latent_prompt]  # (L,)
    original, total, factors = batch, TrainReport(seconds=0.0), start
    for r in range(config.robust_rounds):
        report = optimise(pipe, batch, per_round, progress, factors)
        total.losses += report.losses
        total.step_seconds += report.step_seconds
        total.parts = report.parts
        if r == config.robust_rounds - 1:
            break  # the adapter stays for take_factors
        fresh = take_factors(pipe)
        factors = dict(fresh)
        names = apply_patches(pipe, [Patch(fresh, PatchInfo())])
        try:
            found = [
                learn_tokens(
                    pipe,
                    original.latents[owner == k],
                    f"<fmn-adv-{r}-{k}>",
                    (pl.concept.name, pl.anchor, "")[r % 3],  # start at the name, the anchor, or EOS
                    InversionConfig(
                        num_tokens=1,
                        steps=config.robust_attack_steps,
                        template=substitute(pl.prompts[0], pl.concept.name, "{}"),
                        seed=config.seed + r,
                    ),
                    progress=False,
                )
                for k, pl in enumerate(plans)
            ]
        finally:
            remove_patches(pipe, names)
        batch = _with_adversarial(pipe, batch, original, plans, found, config)
    return total


def _with_adversarial(
    pipe: Any,
    batch: TrainingSet,
    original: TrainingSet,
    plans: list[ConceptPlan],
    found: list[LearnedTokens],
    config: TrainConfig,
) -> TrainingSet:
    """``batch`` plus the original prompts rewritten with the attack's tokens, on the same latents and anchors."""
    owner = [k for k, pl in enumerate(plans) for _ in pl.prompts]
    prompts = [p for pl in plans for p in pl.prompts]
    words = [found[k].words for k in owner]
    with added_tokens(pipe, [n for t in found for n in t.names], torch.cat([t.embeddings for t in found])):
        adversarial = [
            substitute(p, plans[k].concept.name, w) for p, k, w in zip(prompts, owner, words, strict=True)
        ]
        cond = encode(pipe, adversarial)
        masks = _masks(pipe.tokenizer, adversarial, words, config.after)
    return dataclasses.replace(
        batch,
        concept=batch.concept.cat(cond),
        anchor=batch.anchor.cat(original.anchor),
        masks=torch.cat([batch.masks, masks]),
        latents=torch.cat([batch.latents, original.latents]),
        latent_prompt=torch.cat([batch.latent_prompt, original.latent_prompt + len(batch.concept)]),
        eta=torch.cat([batch.eta, original.eta]),
    )


def _subsample(values: list[float], n: int) -> list[float]:
    """At most ``n`` evenly spaced values, first and last included."""
    if len(values) <= n:
        return [round(v, 6) for v in values]
    return [round(values[round(i * (len(values) - 1) / (n - 1))], 6) for i in range(n)]


def _preservation(lora: dict[str, Any], states: torch.Tensor) -> torch.Tensor:
    """Mean squared change of every patched projection's output on the preserve tokens' encoder states."""
    terms = [preservation(module(states) - module.get_base_layer()(states)) for module in lora.values()]
    return torch.stack(terms).mean()


def _drop_adapter(unet: Any) -> None:
    """Delete the training adapter; when no other adapter is loaded, unwrap the peft layers too, so that the
    UNet is again exactly the module it was (same modules, same state-dict keys)."""
    unet.delete_adapters(ADAPTER)
    if not getattr(unet, "peft_config", None):
        unet.unload_lora()


def take_factors(pipe: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The trained factors as (A, B) with alpha folded into B, then the adapter is removed from the UNet."""
    from peft import get_peft_model_state_dict

    unet = pipe.unet
    scale = unet.peft_config[ADAPTER].lora_alpha / unet.peft_config[ADAPTER].r
    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    _drop_adapter(unet)
    factors = {}
    for key, a in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        b = state[f"{module}.lora_B.weight"]
        factors[module] = (a.detach().float().clone(), (b.detach().float() * scale).clone())
    return factors
