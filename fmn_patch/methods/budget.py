"""The training budget a start needs: steps, batch size, target pool and preservation weight of a re-steering
run, where the caller leaves them to the method (``TrainConfig``: steps or batch_size 0, pool or preserve_weight
None).

A start from the closed-form edit (UNet bases) already meets the toy bars; training only has to make the values
carry the anchor, so its budget is small. A family with no closed-form start (SD3/3.5, Flux) trains from zero, and
there the budget decides whether the concept goes at all: steps, pool and preservation weight were chosen on toy-sd3,
one patch per lever (BENCHMARKS.md, "What makes a toy-sd3 patch forget"). On an MMDiT the pooled CLIP embedding,
which no K/V patch touches, reaches every block's modulation, so the values have to learn to push against it; the
guided target teaches that, and an edit that only redirected the keys and values to the anchor's could not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from ..errors import FmnPatchError
from .train_config import TrainConfig


@dataclass(frozen=True)
class Budget:
    """What a run spends per concept: optimisation steps of ``batch_size`` samples drawn from a pool of ``pool``
    fixed samples whose guided targets are computed once."""

    steps: int
    batch_size: int
    pool: int
    # The preservation weight w_p for every category; None: per category (resteer.PRESERVE: 30, styles 100).
    preserve_weight: float | None = None
    # How many times each neighbour's preservation row counts (TrainConfig.neighbour_weight); 1: like any other.
    neighbour_weight: float = 1.0


#: From the closed-form edit (UNet bases): meets the toy bars (bench/train_quality.py, robust_quality.py); neighbours
#: weighted as in the edit it starts from (EditConfig.neighbour_weight).
FROM_EDIT: Final = Budget(steps=15, batch_size=4, pool=32, neighbour_weight=10.0)
#: From zero on a family without a closed-form start (SD3/3.5, Flux): toy-sd3's bars (bench/toy_sd3_quality.py).
FROM_ZERO: Final = Budget(steps=150, batch_size=8, pool=256, preserve_weight=100.0)
#: ``--robust`` on a UNet base, from zero, split into its rounds (a pool per round): what holds circle against
#: Concept Inversion on the toy (bench/robust_quality.py; the budgets that did not: BENCHMARKS.md "Training defaults").
ROBUST: Final = Budget(steps=300, batch_size=2, pool=32)


def budget_for(closed_form: bool, robust: bool = False) -> Budget:
    """The default budget of a family that does (UNet) or does not (MMDiT) offer the closed-form start, plain or
    under ``--robust``. A UNet trained with ``init="zero"`` keeps the UNet's budget: its patches stay what they were."""
    if robust and closed_form:
        return ROBUST
    return FROM_EDIT if closed_form else FROM_ZERO


def resolved(config: TrainConfig, closed_form: bool) -> TrainConfig:
    """``config`` with every budget field it leaves to the method (steps or batch_size 0, pool or neighbour_weight
    None) set from ``budget_for(closed_form, robust)``; the fields it gives are kept."""
    budget = budget_for(closed_form, bool(config.robust_rounds))
    left = {
        "steps": config.steps == 0,
        "batch_size": config.batch_size == 0,
        "pool": config.pool is None,
        "preserve_weight": config.preserve_weight is None and budget.preserve_weight is not None,
        "neighbour_weight": config.neighbour_weight is None,
    }
    return dataclasses.replace(config, **{n: getattr(budget, n) for n, free in left.items() if free})


def spent(config: TrainConfig) -> Budget:
    """The budget of a resolved ``config`` (``resolved`` first: no field may be left to the method)."""
    if not config.steps or not config.batch_size or config.pool is None:
        raise FmnPatchError("the training budget is not resolved; call budget.resolved(config, ...) first")
    return Budget(
        config.steps,
        config.batch_size,
        config.pool,
        config.preserve_weight,
        1.0 if config.neighbour_weight is None else config.neighbour_weight,
    )


def offers_edit(base: Any) -> bool:
    """Whether ``base``'s family offers the closed-form edit (UNet), hence a start from it under ``init="auto"``."""
    try:
        base.family.require_closed_form()
    except FmnPatchError:
        return False
    return True
