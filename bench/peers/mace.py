"""MACE, Mass Concept Erasure in Diffusion Models (Lu, Wang, Li, Liu and Kong, CVPR 2024, arXiv 2403.06135),
re-implemented faithfully as a peer baseline for the benches.

Source: the authors' code, Shilin-LU/MACE at 057e7a6 (``training.py``, ``src/cfr_lora_training.py``,
``src/cfr_utils.py``, ``src/dataset.py``, ``src/fuse_lora_close_form.py``, ``src/mace_lora_atten_processor.py``,
``src/cache_coco.py``, ``data_preparation.py``) and its celebrity configs (``configs/celebrity/erase_cele_*.yaml``).
Where the paper and the code differ, the code is followed. Three stages, all on the text-side ``to_k``/``to_v`` of
every cross-attention (``attn2``):

1. Closed-form refinement (CFR). Each erased concept's prompts are its name in 30 templates (``augment``; the
   code samples 30 of ``prompt_len`` 30 indices, so the object list's 31st template is never used), each paired
   with the same template around the mapping concept ("a person"). Rows: the padded states of the erased prompt at
   the positions its tokens share with the mapped prompt (common prefix and common suffix, EOS included, then
   every later position, aligned from the end; the concept's own tokens are left out), targets W t at the paired
   positions of the mapped prompt. Preservation: a cache of sum W k k^T and sum k k^T over every position of a
   prior set (all 616,767 COCO-2014 captions) plus ``preserve_weight`` times a domain set (other celebrities),
   the targets the base's own W k. W' = (lamb W + sum W t c^T + s C_W)(lamb I + sum c c^T + s C)^-1 with
   lamb = 0 and s = ``train_preserve_scale`` squared: ``cfr_lora_training`` scales the cache once when it builds
   it and ``closed_form_refinement`` scales it again (1e-8 in effect; the fusion below scales once).
2. One LoRA per concept, trained on the refined model: rank 1 on ``attn2.to_k``/``to_v`` only (the processor also
   hangs zero-initialised ``to_q``/``to_out`` LoRAs on every attention, never optimised: no effect; dropped), up
   factor zero, down factor N(0, 1/rank). 50 steps of batch 1, AdamW lr 1e-4, betas (0.9, 0.999), weight decay
   0.01, gradient norm clipped to 1, constant rate; each step one of the concept's 8 images (an epoch is a random
   order of them) with one of its 30 prompts at random, t drawn with the "relation-focal importance sampling"
   weights sigmoid(0.05 (t - 200)) - sigmoid(0.05 (t - 400)), noise added to its latent. Loss: the sum over
   cross-attention layers of the L2 norm of the attention probabilities at the concept's tokens and at every
   EOS-id position (``use_pooler``: SD pads with EOS, so the padding too), over the pixels of the concept's mask
   resized to the layer's map (nearest, > 0.5); images and masks come from the base (8 generations of
   "a photo of the {name}") and Grounded-SAM, no mask for styles.
3. Multi-LoRA fusion, closed form: W* = (lamb W' + sum_i W_i X_i + f C_W)(lamb I + sum_i X_i + f C)^-1, X_i the
   sum x x^T over every padded position of concept i's 30 prompts, W_i = W' + B_i A_i (its LoRA fused into the
   refined model), f = ``fuse_preserve_scale``, the same cache and targets as stage 1 (the base's W k), lamb = 0.

Defaults: the 5-celebrity config (``erase_cele_5.yaml``); ``preserve_weight`` is the only field the celebrity
configs change with N (``CELEBRITY_PRESERVE_WEIGHT``; ``for_concepts`` picks it). ``TOY`` keeps every default:
MACE's 50 LoRA steps per concept are already a toy-sized run (the project keeps FMN's released 35 steps on the toy
likewise), so no step count is scaled. Measured on the v1 toy (bob alone, 2 images per prompt): 0 and 50 LoRA steps
both leave bob in 31% of his images, 500 steps in 19%; at MACE's step count the two closed forms do the erasing.

Deviations: each concept's 30 prompts are the caller's ``templates`` (on the toy: the bench's own prompt forms and
paraphrases in every colour; the toy's vocabulary has few of MACE's English words); the images and masks are the
caller's ``references`` (on the toy, ``toy_references``: renders of the concept by the world's own renderer with
the subject's exact mask, where MACE generates with the base and segments with Grounded-SAM); images reach the
latents through the family's VAE as [-1, 1] pixels and its mean latent (the code normalises with ImageNet's
mean and std and samples the latent); the prior cache is the caller's ``prior`` captions (on the toy the world's
own captions, ``toy_captions``) with the texts naming an erased concept dropped (COCO seldom names a celebrity; the
toy's captions name its identities often), each caption weighted 616,767 / len(prior) so the prior carries the
weight MACE's COCO cache carries; the domain cache is the caller's ``preserve`` texts (erased names removed, as
UCE's), each at MACE's per-row weight; one shared Q with W' = W Q serves every layer in stage 1 (each target is W
times a text state); sums and solves in float64 (the code: float32 ``torch.inverse``); own seeded generators (the
code's global RNGs cannot be matched); the toy's tokenizer has L = 20 positions instead of 77.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fmn_patch import values
from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import Base
from fmn_patch.families.grads import frozen
from fmn_patch.families.threads import sized_threads
from fmn_patch.format.patch import Patch
from fmn_patch.methods.loop import LoopConfig, optimise

from .patching import anchors_for, batches, check_names, check_texts, padded_gram, peer_patch, weights

#: The prior cache's size in captions: COCO-2014 train + val, as ``src/cache_coco.py`` reads them.
PRIOR_CAPTIONS = 616_767
#: ``preserve_weight`` of the celebrity configs, by the number of celebrities erased.
CELEBRITY_PRESERVE_WEIGHT: Mapping[int, float] = {1: 8e3, 5: 5e4, 10: 8e4, 100: 2e5}
#: ``prompt_augmentation``'s object templates as the code uses them (the first ``prompt_len`` = 30).
AUGMENT_TEMPLATES = tuple(
    t.replace("{}", "{concept}")
    for t in (
        "{} in a photo", "{} in a snapshot", "A snapshot of {}", "A photograph showcasing {}",
        "An illustration of {}", "A digital rendering of {}", "A visual representation of {}", "A graphic of {}",
        "A shot of {}", "A photo of {}", "A black and white image of {}", "A depiction in portrait form of {}",
        "A scene depicting {} during a public gathering", "{} captured in an image",
        "A depiction created with oil paints capturing {}", "An image of {}",
        "A drawing capturing the essence of {}", "An official photograph featuring {}", "A detailed sketch of {}",
        "{} during sunset/sunrise", "{} in a detailed portrait", "An official photo of {}",
        "Historic photo of {}", "Detailed portrait of {}", "A painting of {}", "HD picture of {}",
        "Magazine cover capturing {}", "Painting-like image of {}", "Hand-drawn art of {}",
        "An oil portrait of {}",
    )
)  # fmt: skip


@dataclass(frozen=True)
class MaceConfig:
    """MACE's hyper-parameters as ``erase_cele_5.yaml`` runs them; every field is recorded in the patch."""

    lamb: float = 0.0  # ridge toward the current weights in both closed forms
    train_preserve_scale: float = 1e-4  # stage 1's cache scale (applied twice by the code: s = this squared)
    fuse_preserve_scale: float = 1e-4  # stage 3's cache scale
    preserve_weight: float = 5e4  # the domain set's weight in the cache, relative to the prior's
    rank: int = 1  # LoRA rank per projection
    lr: float = 1e-4
    steps: int = 50  # LoRA steps per concept, batch 1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    use_pooler: bool = True  # the attention loss also reads every EOS-id position
    importance_sampling: bool = True  # t from the sigmoid window around [200, 400]; False: uniform
    seed: int = 2024
    batch_size: int = 64  # prompts per text-encoder call (no effect on the result)

    def __post_init__(self) -> None:
        values.number(self.lamb, "lamb", 0, 1e6, example="0.0")
        for name in ("train_preserve_scale", "fuse_preserve_scale"):
            values.number(getattr(self, name), name, 0, 1e6, example="1e-4")
        values.number(self.preserve_weight, "preserve_weight", 0, 1e9, example="5e4")
        values.whole(self.rank, "rank", 1, values.MAX_RANK, example=1)
        values.number(self.lr, "lr", 0, 1, above=True, example="1e-4")
        values.whole(self.steps, "steps", 0, values.MAX_STEPS, example=50)
        values.number(self.weight_decay, "weight_decay", 0, 1, example="0.01")
        values.number(self.max_grad_norm, "max_grad_norm", 0, 1e6, above=True, example="1.0")
        for name in ("use_pooler", "importance_sampling"):
            if not isinstance(getattr(self, name), bool):
                raise FmnPatchError(f"{name}={getattr(self, name)!r} must be True or False")
        values.seed(self.seed)
        values.whole(self.batch_size, "batch_size", 1, values.MAX_BATCH, example=64)


#: The toy's run: MACE's defaults unchanged (50 steps per concept already take seconds on the toy).
TOY = MaceConfig()


def for_concepts(n: int, config: MaceConfig = TOY) -> MaceConfig:
    """``config`` with the preserve_weight of the celebrity config for the largest listed N <= n."""
    listed = [k for k in CELEBRITY_PRESERVE_WEIGHT if k <= n] or [min(CELEBRITY_PRESERVE_WEIGHT)]
    return dataclasses.replace(config, preserve_weight=CELEBRITY_PRESERVE_WEIGHT[max(listed)])


@dataclass(frozen=True)
class References:
    """A concept's training images (n, 3, H, W) in [-1, 1] and its subject masks (n, 1, H, W) bool (None: the
    whole image, as MACE does for styles)."""

    images: torch.Tensor
    masks: torch.Tensor | None = None


# ------------------------------------------------------------------------------------------------ closed forms


def matching_positions(old: Sequence[int], new: Sequence[int], length: int) -> tuple[list[int], list[int]]:
    """Paired positions of two true-length id lists (BOS .. EOS) in their padded encodings of ``length``: the
    common prefix, the common suffix, then every later position aligned from the end (MACE's
    ``find_matching_indices`` and its extension in ``prepare_k_v``)."""
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    i, j = len(old) - 1, len(new) - 1
    while i >= start and j >= start and old[i] == new[j]:
        i, j = i - 1, j - 1
    a = list(range(start)) + list(range(i + 1, len(old)))
    b = list(range(start)) + list(range(j + 1, len(new)))
    shift = a[-1] - b[-1]
    a += range(a[-1] + 1, length - max(0, -shift))
    b += range(b[-1] + 1, length - max(0, shift))
    return a, b


def closed_form(lhs: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """lhs (out, in) @ gram^-1 for a symmetric positive definite gram (in, in), float64."""
    chol, info = torch.linalg.cholesky_ex((gram + gram.T) / 2)
    if int(info) != 0:
        raise FmnPatchError(
            "MACE's closed form is singular (no preservation and too few erase rows); give preserve or prior "
            "texts, or lamb > 0"
        )
    return torch.cholesky_solve(lhs.T, chol).T


def cfr_map(erase_cc: torch.Tensor, erase_tc: torch.Tensor, keep: torch.Tensor, lamb: float) -> torch.Tensor:
    """Q (in, in) with W' = W Q for every projection (stage 1), from erase_cc = sum c c^T, erase_tc = sum t c^T
    (targets W t) and keep = s C, the scaled preservation Gram (targets W k); all (in, in) float64."""
    eye = lamb * torch.eye(erase_cc.shape[0], dtype=torch.float64)
    return closed_form(eye + erase_tc + keep, eye + erase_cc + keep)


def fuse(
    w0: torch.Tensor,
    w_cfr: torch.Tensor,
    loras: Sequence[tuple[torch.Tensor, torch.Tensor]],
    grams: Sequence[torch.Tensor],
    keep: torch.Tensor,
    lamb: float,
) -> torch.Tensor:
    """W* (out, in) of one projection (stage 3): each LoRA (A (r, in), B (out, r)) fused into the refined w_cfr
    answers for its concept's Gram X_i (in, in); keep = f C keeps the base w0's outputs; float64."""
    eye = lamb * torch.eye(w0.shape[1], dtype=torch.float64)
    lhs = lamb * w_cfr + w0 @ keep
    for (a, b), x in zip(loras, grams, strict=True):
        lhs = lhs + (w_cfr + b.double() @ a.double()) @ x
    return closed_form(lhs, eye + sum(grams, torch.zeros_like(keep)) + keep)


def erase_sums(
    text: Any, pairs: Sequence[tuple[str, str]], size: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """sum c c^T and sum t c^T (dim, dim) over the matched positions of each (erased, mapped) prompt pair."""
    cc = tc = torch.zeros(())
    rows = 0
    for chunk in batches(pairs, size):
        olds, news = [o for o, _ in chunk], [n for _, n in chunk]
        c_all = text.encode(olds, text.max_length).double()  # (B, L, dim)
        t_all = text.encode(news, text.max_length).double()  # (B, L, dim)
        for k, (o, n) in enumerate(zip(text.ids(olds), text.ids(news), strict=True)):
            a, b = matching_positions(o, n, c_all.shape[1])
            c, t = c_all[k, a], t_all[k, b]  # (m, dim) each
            cc, tc, rows = cc + c.T @ c, tc + t.T @ c, rows + len(a)
    return cc, tc, rows


# ------------------------------------------------------------------------------------------------ LoRA stage


def importance_weights(steps: int, temperature: float = 0.05) -> torch.Tensor:
    """p(t) (steps,) proportional to sigmoid(temperature (t - 200)) - sigmoid(temperature (t - 400))."""
    t = torch.arange(steps, dtype=torch.float64)
    w = torch.sigmoid(temperature * (t - 200)) - torch.sigmoid(temperature * (t - 400))
    return w / w.sum()


def concept_positions(ids: Sequence[int], concept: Sequence[int], eos: int | None) -> torch.Tensor:
    """(L,) bool: every occurrence of the concept's ids in the padded ids, and every ``eos`` position."""
    out = torch.zeros(len(ids), dtype=torch.bool)
    n = len(concept)
    for i in range(len(ids) - n + 1):
        if list(ids[i : i + n]) == list(concept):
            out[i : i + n] = True
    if eos is not None:
        out |= torch.tensor([i == eos for i in ids])
    return out


def attention_loss(
    maps: Sequence[torch.Tensor], mask: torch.Tensor | None, positions: torch.Tensor
) -> torch.Tensor:
    """Sum over layers of ||probs at the concept positions over the masked pixels||; maps (1, heads, N, L),
    mask (1, 1, H, W) bool or None (every pixel), positions (L,) bool."""
    total = torch.zeros(())
    for probs in maps:
        p = probs[0]  # (heads, N, L)
        if mask is not None:
            d = math.isqrt(p.shape[1])
            pixels = F.interpolate(mask.float(), size=(d, d), mode="nearest").flatten() > 0.5  # (N,)
            p = p[:, pixels]
        total = total + p[..., positions].norm()
    return total


@contextlib.contextmanager
def added(
    base: Base, extra: Mapping[str, torch.Tensor], loras: Mapping[str, tuple[torch.Tensor, ...]]
) -> Iterator[None]:
    """Within the block each target computes W x + extra x + B A x: the refined weights and the trained LoRA,
    without writing to the base's weights."""
    handles = []
    for name, layer in base.family.adapters.targets().items():
        d = extra[name].to(layer.weight)
        a, b = loras[name]

        def hook(_m: Any, inputs: tuple[torch.Tensor, ...], out: torch.Tensor, d=d, a=a, b=b) -> torch.Tensor:
            x = inputs[0]
            return out + F.linear(x, d) + F.linear(F.linear(x, a), b)

        handles.append(layer.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def train_lora(
    base: Base,
    extra: Mapping[str, torch.Tensor],
    refs: References,
    prompts: Sequence[str],
    concept: str,
    config: MaceConfig,
    seed: int,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[float]]:
    """One concept's LoRA {target: (A (r, in), B (out, r))} on the refined model (``extra`` = W' - W), and the
    loss of each step."""
    family = base.family
    gen = torch.Generator().manual_seed(seed)
    loras = {}
    for name, layer in family.adapters.targets().items():
        a = torch.randn(config.rank, layer.in_features, generator=gen) / config.rank  # down: N(0, 1/rank)
        loras[name] = (
            a.requires_grad_(True),
            torch.zeros(layer.out_features, config.rank, requires_grad=True),
        )
    latents = family.images.encode_images(refs.images)  # (n, C, h, w)
    cond = family.text.encode(list(prompts))
    tok = family.text.tokenizer
    padded = tok(
        list(prompts), padding="max_length", max_length=family.text.max_length, truncation=True
    ).input_ids
    ids = tok(concept, add_special_tokens=False).input_ids
    eos = tok.eos_token_id if config.use_pooler else None
    positions = [concept_positions(p, ids, eos) for p in padded]
    p_t = importance_weights(family.noise.num_train_timesteps) if config.importance_sampling else None
    order: list[int] = []
    maps: list[torch.Tensor] = []

    def step(g: torch.Generator) -> dict[str, torch.Tensor]:
        if not order:  # a new epoch: the images in a random order
            order.extend(torch.randperm(len(latents), generator=g).tolist())
        i = order.pop(0)
        j = int(torch.randint(len(prompts), (1,), generator=g))
        if p_t is None:
            t = torch.randint(family.noise.num_train_timesteps, (1,), generator=g)
        else:
            t = torch.multinomial(p_t, 1, generator=g)
        x0 = latents[i : i + 1].to(family.adapters.device, family.adapters.dtype)
        x_t = family.noise.add_noise(
            x0, torch.randn(x0.shape, generator=g).to(x0), t.to(family.adapters.device)
        )
        maps.clear()
        # run only to fill ``maps``
        family.noise.denoise(x_t, t.to(family.adapters.device), cond.select(torch.tensor([j])))
        mask = None if refs.masks is None else refs.masks[i : i + 1]
        return {"attention": attention_loss(maps, mask, positions[j].to(x_t.device))}

    params = [p for pair in loras.values() for p in pair]
    loop = LoopConfig(
        steps=config.steps,
        lr=config.lr,
        seed=seed,
        max_grad_norm=config.max_grad_norm,
        weight_decay=config.weight_decay,
        desc=f"mace-lora {concept}",
        hint="lower lr",
    )
    with (
        frozen(family.adapters.denoiser),
        added(base, extra, loras),
        family.noise.capture_attention(lambda _n, p: maps.append(p)),
    ):
        report = optimise(params, step, loop, progress=False)
    return {n: (a.detach(), b.detach()) for n, (a, b) in loras.items()}, report.losses


# ------------------------------------------------------------------------------------------------ the method


def prompt_pairs(name: str, anchor: str, templates: Sequence[str]) -> list[tuple[str, str]]:
    """(erased, mapped) prompts: each template around the concept's name and around its mapping concept."""
    return [(t.replace("{concept}", name), t.replace("{concept}", anchor)) for t in templates]


def check_templates(templates: object) -> list[str]:
    if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
        raise FmnPatchError(f"templates={templates!r} must be a list of texts holding '{{concept}}'")
    if not all(isinstance(t, str) and "{concept}" in t for t in templates):
        raise FmnPatchError(
            f"every template must hold '{{concept}}', e.g. 'a photo of {{concept}}'; got {templates!r}"
        )
    return list(templates)


def without_names(texts: Sequence[str], names: Sequence[str]) -> list[str]:
    """The texts that name no erased concept (a whole word, any case), repeats kept."""
    words = [re.compile(r"\b" + re.escape(n.lower()) + r"\b") for n in names]
    return [t for t in texts if not any(w.search(t.lower()) for w in words)]


@sized_threads
def mace_patch(
    base: Base,
    erase: Sequence[str],
    anchor: str | Sequence[str],
    references: Mapping[str, References],
    preserve: Sequence[str] = (),
    prior: Sequence[str] = (),
    templates: Sequence[str] | Mapping[str, Sequence[str]] = AUGMENT_TEMPLATES,
    config: MaceConfig | None = None,
) -> Patch:
    """A patch that erases the ``erase`` concepts from ``base`` with MACE, each mapped to its ``anchor``.

    ``references``: each concept's images and masks. ``preserve``: the domain set (MACE's other celebrities);
    ``prior``: general captions (MACE's COCO). ``templates``: the prompt forms, with ``{concept}`` (MACE's
    ``augment``), for all concepts or {name: forms} (MACE's per-concept type, object or style). The patch holds
    every projection's exact delta W* - W (LoRA rank min(out, in)).
    """
    base.family.require_closed_form()
    config = config or TOY
    names = check_names(erase)
    anchors = anchors_for(names, anchor)
    missing = [n for n in names if n not in references]
    if missing:
        raise FmnPatchError(f"no reference images for {missing}; give references={{name: References(...)}}")
    forms = {
        n: check_templates(templates.get(n) if isinstance(templates, Mapping) else templates) for n in names
    }
    t0 = time.perf_counter()
    targets = weights(base, "KV")  # (out, in) float64 each
    dim = next(iter(targets.values())).shape[1]
    text = base.family.text.text_states()
    pairs = {n: prompt_pairs(n, a, forms[n]) for n, a in zip(names, anchors, strict=True)}
    domain = [t for t in check_texts(preserve) if t.lower() not in {n.lower() for n in names}]
    captions = without_names(check_texts(prior), names)
    domain_kk, _ = padded_gram(text, list(dict.fromkeys(domain)), dim, config.batch_size)  # each text once
    prior_kk, prior_rows = padded_gram(text, captions, dim, config.batch_size)
    cache = PRIOR_CAPTIONS / max(len(captions), 1) * prior_kk + config.preserve_weight * domain_kk  # C
    erase_cc, erase_tc, erase_rows = erase_sums(text, [p for n in names for p in pairs[n]], config.batch_size)
    q = cfr_map(erase_cc, erase_tc, config.train_preserve_scale**2 * cache, config.lamb)  # stage 1
    refined = {name: w @ q for name, w in targets.items()}  # W' (out, in)
    extra = {name: (refined[name] - w).float() for name, w in targets.items()}
    t1 = time.perf_counter()
    trained = [
        train_lora(base, extra, references[n], [o for o, _ in pairs[n]], n, config, config.seed + i)
        for i, n in enumerate(names)
    ]  # stage 2
    loras = [lora for lora, _ in trained]
    t2 = time.perf_counter()
    grams = [padded_gram(text, [o for o, _ in pairs[n]], dim, config.batch_size)[0] for n in names]
    keep = config.fuse_preserve_scale * cache
    deltas = {
        name: fuse(w, refined[name], [lora[name] for lora in loras], grams, keep, config.lamb) - w
        for name, w in targets.items()
    }  # stage 3
    t3 = time.perf_counter()
    info = {
        "source": "Shilin-LU/MACE (057e7a6) src/cfr_lora_training.py, src/fuse_lora_close_form.py",
        "anchors": dict(zip(names, anchors, strict=True)),
        "prompts": {n: len(p) for n, p in pairs.items()},
        "preserve": len(domain),
        "prior": len(captions),
        "rows": {"erase": erase_rows, "prior": prior_rows},
        "lora_loss": {
            n: [losses[0], losses[-1]] for n, (_, losses) in zip(names, trained, strict=True) if losses
        },
        "seconds": {"cfr": t1 - t0, "lora": t2 - t1, "fuse": t3 - t2, "total": t3 - t0},
    }
    return peer_patch(base, "mace", names, deltas, config, info)
