"""The training budget a start needs: steps, batch size and pool of a re-steering run when the caller leaves them
to the method (``None`` in ``TrainConfig``).

A start from the closed-form edit (UNet bases) already meets the toy bars, and training only has to make the values
carry the anchor: 15 steps of 4 samples from a pool of 32. A family with no closed-form start (SD3/3.5, Flux) trains
from zero, and there the budget decides whether the concept goes at all (toy-sd3, bench/toy_sd3_quality.py): 15 x 4
left circle at 100%, 150 x 8 from a pool of 32 brought it to 21%, and 150 x 8 from a pool of 256 to 4%. On an
MMDiT the pooled CLIP embedding, which K/V cannot touch, still carries the concept into every block's modulation,
so the values have to learn to push against it, and 32 fixed (latent, noise level) samples were too few for that
to hold at the noise levels the sampler visits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..errors import FmnPatchError

if TYPE_CHECKING:
    from .resteer import TrainConfig


@dataclass(frozen=True)
class Budget:
    """What a run spends per concept: optimisation steps of ``batch_size`` samples drawn from a pool of ``pool``
    fixed samples whose guided targets are computed once."""

    steps: int
    batch_size: int
    pool: int


#: From the closed-form edit (UNet bases): meets the toy bars (bench/train_quality.py, robust_quality.py).
FROM_EDIT: Final = Budget(steps=15, batch_size=4, pool=32)
#: From zero on a family without a closed-form start (SD3/3.5, Flux): toy-sd3's bars (bench/toy_sd3_quality.py).
FROM_ZERO: Final = Budget(steps=150, batch_size=8, pool=256)


def budget_for(closed_form: bool) -> Budget:
    """The default budget of a family that does (UNet) or does not (MMDiT) offer the closed-form start. A UNet
    trained with ``init="zero"`` keeps the UNet's budget: its patches stay what they were."""
    return FROM_EDIT if closed_form else FROM_ZERO


def resolved(config: TrainConfig, closed_form: bool) -> TrainConfig:
    """``config`` with every budget field it leaves to the method (steps or batch_size 0, pool None) set from
    ``budget_for(closed_form)``; the fields it gives are kept."""
    budget = budget_for(closed_form)
    left = {"steps": config.steps == 0, "batch_size": config.batch_size == 0, "pool": config.pool is None}
    return dataclasses.replace(config, **{n: getattr(budget, n) for n, free in left.items() if free})


def spent(config: TrainConfig) -> Budget:
    """The budget of a resolved ``config`` (``resolved`` first: no field may be left to the method)."""
    if not config.steps or not config.batch_size or config.pool is None:
        raise FmnPatchError("the training budget is not resolved; call budget.resolved(config, ...) first")
    return Budget(steps=config.steps, batch_size=config.batch_size, pool=config.pool)


def offers_edit(base: Any) -> bool:
    """Whether ``base``'s family offers the closed-form edit (UNet), hence a start from it under ``init="auto"``."""
    try:
        base.family.require_closed_form()
    except FmnPatchError:
        return False
    return True
