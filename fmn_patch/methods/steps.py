"""``run_steps``: the optimisation of one re-steering run, the three-term loss of ``fmn_patch.methods.resteer`` step
by step, and ``TrainReport``, where its time and samples went."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..families.checkpointing import gradient_checkpointing
from .budget import offers_edit, resolved, spent
from .dataset import TrainingSet
from .loop import LoopConfig, LoopReport, optimise
from .lora import LoraSession, preservation_loss
from .losses import resteer_loss
from .samples import Samples, draw, guided_targets, sample_pool
from .train_config import TrainConfig


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
            pred = family.noise.denoise(s.x_t, s.t, cond)
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
    capture = family.noise.capture_attention(sink) if config.resteer_weight > 0 else contextlib.nullcontext()
    with gradient_checkpointing(family, config.checkpointing), capture:
        report = optimise(session.params, step, loop, weights=weights, progress=progress)
    if pool is not None:
        report.phases["pool"], report.samples["pool"] = pool_seconds, len(pool)
    return report
