"""The text-encoder part of a patch: a LoRA on the last layers of the CLIP text encoder, fitted so that prompts
naming the concept, or written with any token an attack found for it, encode as the anchor's prompts do, while
every other prompt encodes as before.

No denoiser in the loop: the objective is in the encoder's output space, the states every cross-attention reads
(and, where a family pools them, what it modulates with), so the fit takes seconds. The fit runs on a copy of the
encoder, so the base is never touched; the result is the factors of ``Patch.encoders``.

Attention re-steering and the closed-form edit act on the keys and values of the concept's states; a new token
that an attacker learns brings other states, which those patches do not see. This part maps the tokens it is
shown (the name, its aliases, harvested attack tokens) onto the anchor before any key or value is computed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import values
from ..errors import FmnPatchError
from ..families import encoders
from ..families.base import Base
from ..families.grads import frozen
from ..format.patch import Patch
from .inversion import LearnedTokens
from .loop import LoopConfig, optimise

ADAPTER = "fmn_encoder"
COMPONENT = "text_encoder"  # the one CLIP encoder of the families that learn tokens (SD 1.x/2.x)
EncoderFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # written module -> (A (r, in), B (out, r))


@dataclass(frozen=True)
class EncoderFitConfig:
    """How the text-encoder factors are fitted."""

    layers: int = (
        1  # the encoder's last ``layers`` layers carry factors (attention q/k/v/out and MLP fc1/fc2)
    )
    rank: int = 4
    steps: int = 200
    lr: float = 3e-3
    preserve_weight: float = 1.0  # the kept prompts' mean squared drift, against the erased prompts' error
    batch_size: int = 64  # kept prompts drawn per step (every erase prompt is in every step)
    seed: int = 0

    def __post_init__(self) -> None:
        values.whole(self.layers, "layers", 1, 1000, example=1)
        values.whole(self.rank, "rank", 1, 4096, example=4)
        values.whole(self.steps, "steps", 1, 1_000_000, example=200)
        values.number(self.lr, "lr", 0, 10, above=True, example="3e-3")
        values.number(self.preserve_weight, "preserve_weight", 0, 1e6, example=1.0)
        values.whole(self.batch_size, "batch_size", 1, 1_000_000, example=64)


@dataclass(frozen=True)
class EncoderPrompts:
    """What a fit reads: ``erase[i]`` must encode as ``targets[i]`` did (the anchor's prompt, position for position),
    and every ``preserve`` prompt as it did."""

    erase: tuple[str, ...]
    targets: tuple[str, ...]
    preserve: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.erase) != len(self.targets) or not self.erase:
            raise ValueError(
                f"{len(self.erase)} erase prompts for {len(self.targets)} targets; give one per prompt"
            )


def fitted_modules(encoder: torch.nn.Module, layers: int) -> dict[str, str]:
    """The encoder's patchable modules in its last ``layers`` layers: written name -> the name in this encoder."""
    found = encoders.find_encoder_targets(encoder, COMPONENT)
    last = max(encoders.layer_of(m) for m in found)
    live = {
        ("" if n.startswith(encoders.PREFIX) else encoders.PREFIX) + n: n for n, _ in encoder.named_modules()
    }
    return {m: live[m] for m in found if encoders.layer_of(m) > last - layers}


def fit_encoder(
    base: Base,
    prompts: EncoderPrompts,
    config: EncoderFitConfig | None = None,
    tokens: Sequence[LearnedTokens] = (),
    *,
    start: EncoderFactors | None = None,
    progress: bool = False,
) -> EncoderFactors:
    """Fit text-encoder factors (written module -> (A, B), alpha folded into B) on a copy of the base's encoder:
    mean squared error of the erase prompts' states to their targets' base states, plus ``preserve_weight`` times
    the preserve prompts' drift. ``tokens`` (an attack's learned tokens) may appear in the erase prompts; ``start``
    continues from earlier factors."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict

    config = config or EncoderFitConfig()
    family = base.family
    if family.name != "unet":  # MMDiT conditioning joins two CLIPs and T5; their fit is not built
        raise FmnPatchError(
            f"the text-encoder fit serves SD 1.x/2.x bases (one CLIP encoder), not the {family.name} family"
        )
    family.text.require_one_encoder("the text-encoder fit")
    names = [n for t in tokens for n in t.names]
    table = torch.cat([t.embeddings for t in tokens]) if tokens else None
    with _tokens(base, names, table) as encoder:  # the ids and the copy with the tokens added
        clone = copy.deepcopy(encoder).float()  # the base encoder, never changed
        erase, targets = family.text.padded_ids(prompts.erase), family.text.padded_ids(prompts.targets)
        preserve = family.text.padded_ids(prompts.preserve) if prompts.preserve else None
    modules = fitted_modules(clone, config.layers)
    with torch.no_grad(), frozen(clone):
        target = clone(targets)[0]  # (P, T, d): the anchors' states before any change
        kept = clone(preserve)[0] if preserve is not None else None  # (Q, T, d)
    lora = LoraConfig(r=config.rank, lora_alpha=config.rank, target_modules=sorted(modules.values()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # peft draws lora_A from the global RNG: seeded here, restored after
        inject_adapter_in_model(lora, clone, adapter_name=ADAPTER)
    for p_name, p in clone.named_parameters():
        p.requires_grad_(ADAPTER in p_name)
    if start:
        state = {
            f"{modules[m]}.lora_{k}.weight": t for m, (a, b) in start.items() for k, t in (("A", a), ("B", b))
        }
        set_peft_model_state_dict(clone, state, adapter_name=ADAPTER)
    params = [p for p in clone.parameters() if p.requires_grad]

    def step(gen: torch.Generator) -> dict[str, torch.Tensor]:
        parts = {"erase": F.mse_loss(clone(erase)[0], target)}  # (P, T, d) against the anchors'
        if kept is not None and preserve is not None:
            pick = torch.randperm(len(preserve), generator=gen)[: config.batch_size]
            parts["preserve"] = F.mse_loss(clone(preserve[pick])[0], kept[pick])  # (b, T, d)
        return parts

    loop = LoopConfig(
        steps=config.steps,
        lr=config.lr,
        seed=config.seed,
        desc="fitting the text encoder",
        hint="lower the encoder fit's lr",
    )
    optimise(
        params, step, loop, weights={"erase": 1.0, "preserve": config.preserve_weight}, progress=progress
    )
    state = get_peft_model_state_dict(clone, adapter_name=ADAPTER)
    written = {live: w for w, live in modules.items()}
    return {
        written[m]: (
            state[f"{m}.lora_A.weight"].detach().clone(),
            state[f"{m}.lora_B.weight"].detach().clone(),
        )
        for m in sorted(written)
    }


def with_encoder_factors(base: Base, patch: Patch, factors: EncoderFactors) -> Patch:
    """``patch`` with ``factors`` (from ``fit_encoder``) on the base's text encoder beside its key/value factors,
    recording the base's text-encoder hash, so that a base whose encoder differs is told on apply."""
    info = dataclasses.replace(patch.info, encoder_hash=base.family.identity.encoder_hash())
    return Patch(patch.factors, info, patch.component, {**patch.encoders, COMPONENT: dict(factors)})


@contextlib.contextmanager
def _tokens(base: Base, names: list[str], table: torch.Tensor | None) -> Iterator[torch.nn.Module]:
    """The text encoder, with ``names`` added to it and the tokenizer (their rows ``table``) for the block."""
    family = base.family
    if not names:
        yield family.text.text_encoders()[0]
        return
    with family.text.added_tokens(names, table):
        yield family.text.text_encoders()[0]
