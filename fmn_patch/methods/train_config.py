"""``TrainConfig``: what a re-steering run is asked to do, every field checked as it is made and recorded in the
patch header; and the per-category defaults its None fields stand for (``eta_of``, ``preserve_of``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .. import values
from ..errors import FmnPatchError
from ..values import MAX_BATCH, MAX_RANK, MAX_STEPS

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
        for name in ("after", "train_values", "checkpointing"):
            values.flag(getattr(self, name), name)
        values.flag(self.preserve_padding, "preserve_padding", optional=True)
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


def eta_of(config: TrainConfig, category: str) -> float:
    """The negative guidance for a concept of ``category``: the config's, else the category's default."""
    return config.eta if config.eta is not None else ETA.get(category, ETA_DEFAULT)


def preserve_of(config: TrainConfig, *categories: str) -> float:
    """The preservation weight of a patch of concepts of ``categories``: the config's, else the smallest of theirs."""
    if config.preserve_weight is not None:
        return config.preserve_weight
    return min(PRESERVE.get(category, PRESERVE_DEFAULT) for category in categories)
