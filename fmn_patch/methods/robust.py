"""Adversarial re-steering (``TrainConfig.robust_rounds``), in the spirit of AdvUnlearn / Receler.

The steps are split into rounds; after each round but the last, an inner attack against the patch as it stands
finds a prompt that brings the concept back, and the concept's prompts written with that token join the erase set
of the next rounds. Same LoRA targets, same file format. The attack (``TrainConfig.robust_attack``): ``inversion``,
Concept Inversion (a new token learned by textual inversion on the concept's reference latents, through the
denoiser), or ``kv``, key/value inversion (a new token whose keys and values through the patch match the base's for
the concept's prompts; text encoder and projections only, see ``kv_attack.py``).
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from ..concepts.prompts import ConceptPlan, substitute
from ..families.base import Base
from ..families.checkpointing import gradient_checkpointing
from ..families.conditioning import Conditioning
from ..families.stack import apply_patches, remove_patches
from ..format.header import PatchInfo
from ..format.patch import Patch
from ..progress import phase
from .dataset import TrainingSet, concept_masks
from .inversion import InversionConfig, LearnedTokens, learn_tokens
from .kv_attack import kv_inversion
from .lora import FactorMap, LoraSession, lora_adapter
from .steps import TrainReport, run_steps
from .train_config import TrainConfig


def robust_rounds(
    base: Base,
    plans: list[ConceptPlan],
    batch: TrainingSet,
    config: TrainConfig,
    report: TrainReport,
    progress: bool,
    start: FactorMap | None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train in ``config.robust_rounds`` rounds with an attack between them; returns the last round's factors."""
    per_round = dataclasses.replace(config, steps=max(1, math.ceil(config.steps / config.robust_rounds)))
    owner = torch.tensor([k for k, pl in enumerate(plans) for _ in pl.prompts])[batch.latent_prompt]  # (L,)
    original, factors = batch, start
    fresh: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    last = config.robust_rounds - 1
    attack = config.robust_attack  # UNet bases only: MMDiT families refuse --robust (Family.require_robust)
    with phase("robust rounds", config.robust_rounds, "rounds") as rounds:
        for r in range(config.robust_rounds):
            with lora_adapter(
                base, config.rank, seed=config.seed, start=factors, train_values=config.train_values
            ) as session:
                report.add(
                    run_steps(session, batch, per_round, per_round.steps * batch.concepts, progress),
                    config.batch_size,
                )
                fresh = session.factors()
                if r < last and attack == "kv":  # where the patch acts: no denoiser, no apply
                    tick = time.perf_counter()
                    with phase(f"round {r + 1}: key/value inversion attack"):
                        found = _kv_attack(session, plans, original, r, config)
                    report.spend(
                        "attacks", time.perf_counter() - tick, len(plans) * config.robust_attack_steps
                    )
            if r == last:
                rounds.advance()
                break
            factors = dict(fresh)
            if attack == "inversion":
                names = apply_patches(
                    base,
                    [Patch(fresh, PatchInfo(architecture=base.architecture), base.family.adapters.component)],
                )
                tick = time.perf_counter()
                try:
                    with (
                        gradient_checkpointing(base.family, config.checkpointing),
                        phase(f"round {r + 1}: Concept Inversion attack"),
                    ):
                        found = inner_attack(base, plans, original.latents, owner, r, config, progress)
                finally:
                    remove_patches(base, names)
                spent = len(plans) * config.robust_attack_steps * config.robust_attack_batch
                report.spend("attacks", time.perf_counter() - tick, spent)
            batch = with_adversarial(base, batch, original, plans, found, config)
            rounds.advance()
    return fresh


def _kv_attack(
    session: LoraSession, plans: list[ConceptPlan], original: TrainingSet, r: int, config: TrainConfig
) -> list[LearnedTokens]:
    """Round ``r``'s key/value inversion: one token per concept, against the session's adapter as it stands."""
    out, start = [], 0
    for k, pl in enumerate(plans):
        own = original.concept.select(torch.arange(start, start + len(pl.prompts)))
        start += len(pl.prompts)
        out.append(
            kv_inversion(
                session,
                pl,
                own,
                f"<fmn-adv-{r}-{k}>",
                (pl.concept.name, pl.anchor, "")[r % 3],  # start at the name, the anchor, or EOS
                steps=config.robust_attack_steps,
                lr=config.robust_attack_lr,
                seed=config.seed + r,
            )
        )
    return out


def inner_attack(
    base: Base,
    plans: list[ConceptPlan],
    latents: torch.Tensor,
    owner: torch.Tensor,
    r: int,
    config: TrainConfig,
    progress: bool,
) -> list[LearnedTokens]:
    """Round ``r``'s inner attack: one token per concept, learned against the patch as it stands (public: a bench
    variant of the rounds, ``bench/mmdit_robust.py``, calls it as the rounds do)."""
    return [
        learn_tokens(
            base,
            latents[owner == k],
            f"<fmn-adv-{r}-{k}>",
            (pl.concept.name, pl.anchor, "")[r % 3],  # start at the name, the anchor, or EOS
            InversionConfig(
                num_tokens=1,
                steps=config.robust_attack_steps,
                batch_size=config.robust_attack_batch,
                lr=config.robust_attack_lr,
                template=substitute(pl.prompts[0], pl.concept.name, "{}"),
                seed=config.seed + r,
            ),
            progress=progress,
        )
        for k, pl in enumerate(plans)
    ]


def with_adversarial(
    base: Base,
    batch: TrainingSet,
    original: TrainingSet,
    plans: list[ConceptPlan],
    found: list[LearnedTokens],
    config: TrainConfig,
) -> TrainingSet:
    """``batch`` plus the original prompts rewritten with the attack's tokens, on the same latents and anchors."""
    cond, masks = encode_attacked(base, plans, found, config.after)
    return batch.with_prompts(cond, original.anchor, masks, original)


def encode_attacked(
    base: Base, plans: list[ConceptPlan], found: list[LearnedTokens], after: bool
) -> tuple[Conditioning, torch.Tensor]:
    """The concepts' prompts with each concept's attack token for its name, encoded with the tokens added, and the
    (P, T) positions the re-steering loss reads in them."""
    owner = [k for k, pl in enumerate(plans) for _ in pl.prompts]
    prompts = [p for pl in plans for p in pl.prompts]
    words = [found[k].words for k in owner]
    family = base.family
    with family.text.added_tokens(
        [n for t in found for n in t.names], torch.cat([t.embeddings for t in found])
    ):
        attacked = [
            substitute(p, plans[k].concept.name, w) for p, k, w in zip(prompts, owner, words, strict=True)
        ]
        return family.text.encode(attacked), concept_masks(base, attacked, words, after)
