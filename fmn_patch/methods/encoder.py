"""The text-encoder part of a patch: a LoRA on the last layers of the CLIP text encoders, fitted so that prompts
naming the concept, or written with any token an attack found for it, encode as the anchor's prompts do, while
every other prompt encodes as before.

No denoiser in the loop: the objective is in the encoder's output space, the states every cross-attention reads
(and, where a family pools them, what it modulates with), so the fit takes seconds. The fit runs on copies of the
encoders, so the base is never touched; the result is the factors of ``Patch.encoders``.

Attention re-steering and the closed-form edit act on the keys and values of the concept's states; a new token
that an attacker learns brings other states, which those patches do not see. This part maps the tokens it is
shown (the name, its aliases, harvested attack tokens) onto the anchor before any key or value is computed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import values
from ..errors import FmnPatchError
from ..families import encoders
from ..families.base import Base
from ..families.conditioning import Conditioning
from ..families.grads import frozen
from ..format.patch import Patch
from .inversion import LearnedTokens
from .loop import LoopConfig, optimise

ADAPTER = "fmn_encoder"
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


def fitted_modules(encoder: torch.nn.Module, component: str, layers: int) -> dict[str, str]:
    """The encoder's patchable modules in its last ``layers`` layers: written name -> the name in this encoder."""
    found = encoders.find_encoder_targets(encoder, component)
    last = max(encoders.layer_of(m) for m in found)
    live = {
        ("" if n.startswith(encoders.PREFIX) else encoders.PREFIX) + n: n for n, _ in encoder.named_modules()
    }
    return {m: live[m] for m in found if encoders.layer_of(m) > last - layers}


def distance(a: Conditioning, b: Conditioning) -> torch.Tensor:
    """Mean squared distance of two conditionings: their states (N, T, D) and each extra (a pooled vector (N, P),
    ...); an extra no text encoder changes (SDXL's size ids) adds nothing."""
    total = F.mse_loss(a.states, b.states)
    for key, value in (a.added or {}).items():
        total = total + F.mse_loss(value, b.added[key] if b.added else value)
    return total


def fit_encoder(
    base: Base,
    prompts: EncoderPrompts,
    config: EncoderFitConfig | None = None,
    tokens: Sequence[LearnedTokens] = (),
    *,
    start: Mapping[str, EncoderFactors] | None = None,
    progress: bool = False,
) -> dict[str, EncoderFactors]:
    """Fit text-encoder factors (component -> written module -> (A, B), alpha folded into B) on copies of the base's
    CLIP encoders: the erase prompts' conditioning (states, and the pooled vector where the family has one) to
    their targets' base conditioning, plus ``preserve_weight`` times the preserve prompts' drift. ``tokens`` (an
    attack's learned tokens) may appear in the erase prompts; ``start`` continues from earlier factors.

    Every family that learns tokens is served (SD 1.x/2.x: the one CLIP; SD3: both CLIPs, T5 left as it is; Flux:
    its CLIP, whose pooled vector it modulates with); SDXL, which learns none, is refused in one line."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict

    config = config or EncoderFitConfig()
    family = base.family
    family.text.require_one_encoder("the text-encoder fit")
    names = [n for t in tokens for n in t.names]
    table = torch.cat([t.embeddings for t in tokens]) if tokens else None
    preserve = list(prompts.preserve)
    with family.adapters.encoder_copies() as copies, _tokens(base, names, table):
        if not copies:
            raise FmnPatchError(f"this {family.name} base has no CLIP text encoder for a text-encoder fit")
        with torch.no_grad(), frozen(*copies.values()):
            # the anchors' conditioning before any change
            target = family.text.encode_with_grad(prompts.targets)
            kept = family.text.encode_with_grad(preserve) if preserve else None
        modules = {c: fitted_modules(e, c, config.layers) for c, e in copies.items()}
        for component, encoder in copies.items():
            lora = LoraConfig(
                r=config.rank, lora_alpha=config.rank, target_modules=sorted(modules[component].values())
            )
            with torch.random.fork_rng(devices=[]):
                # peft draws lora_A from the global RNG: seeded here, restored after
                torch.manual_seed(config.seed)
                inject_adapter_in_model(lora, encoder, adapter_name=ADAPTER)
            for p_name, p in encoder.named_parameters():
                p.requires_grad_(ADAPTER in p_name)
            if start and start.get(component):
                state = {
                    f"{modules[component][m]}.lora_{k}.weight": t
                    for m, (a, b) in start[component].items()
                    for k, t in (("A", a), ("B", b))
                }
                set_peft_model_state_dict(encoder, state, adapter_name=ADAPTER)
        params = [p for e in copies.values() for p in e.parameters() if p.requires_grad]

        def step(gen: torch.Generator) -> dict[str, torch.Tensor]:
            parts = {"erase": distance(family.text.encode_with_grad(prompts.erase), target)}
            if kept is not None:
                pick = torch.randperm(len(preserve), generator=gen)[: config.batch_size]
                drift = family.text.encode_with_grad([preserve[i] for i in pick.tolist()])
                parts["preserve"] = distance(drift, kept.select(pick))
            return parts

        loop = LoopConfig(
            steps=config.steps,
            lr=config.lr,
            seed=config.seed,
            desc="fitting the text encoder",
            hint="lower the encoder fit's lr",
        )
        others = [e for e in family.text.text_encoders() if all(e is not c for c in copies.values())]
        with frozen(*others):  # T5 (SD3, Flux) is read, never trained: no gradient lands on the base's
            optimise(
                params,
                step,
                loop,
                weights={"erase": 1.0, "preserve": config.preserve_weight},
                progress=progress,
            )
        fitted: dict[str, EncoderFactors] = {}
        for component, encoder in copies.items():
            state = get_peft_model_state_dict(encoder, adapter_name=ADAPTER)
            fitted[component] = {
                written: (
                    state[f"{live}.lora_A.weight"].detach().clone(),
                    state[f"{live}.lora_B.weight"].detach().clone(),
                )
                for written, live in sorted(modules[component].items())
            }
    return fitted


def with_encoder_factors(base: Base, patch: Patch, factors: Mapping[str, EncoderFactors]) -> Patch:
    """``patch`` with ``factors`` (from ``fit_encoder``, by component) on the base's text encoders beside its
    key/value factors, recording the base's text-encoder hash, so that a base whose encoder differs is told on
    apply."""
    info = dataclasses.replace(patch.info, encoder_hash=base.family.identity.encoder_hash())
    return Patch(
        patch.factors, info, patch.component, {**patch.encoders, **{c: dict(f) for c, f in factors.items()}}
    )


@contextlib.contextmanager
def _tokens(base: Base, names: list[str], table: torch.Tensor | None) -> Iterator[None]:
    """``names`` added to the tokenizers and the encoders in the pipeline (their rows ``table``) for the block."""
    if not names:
        yield
        return
    with base.family.text.added_tokens(names, table):
        yield
