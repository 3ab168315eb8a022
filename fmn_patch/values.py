"""Checked numbers for configs: every numeric input is validated where its config is built, by these functions.

Each refuses what would crash later, render black or silently do nothing: non-numbers, booleans, NaN and
infinities, and values out of range, with a message that names the value and a valid example.
"""

from __future__ import annotations

import math
from typing import Final, Literal

from .errors import FmnPatchError

MAX_SEED: Final = 2**63 - 1  # torch generators take 64-bit seeds; offsets added to a seed stay in range
MAX_WEIGHT: Final = (
    100.0  # |weight| of a patch in a stack or merge; beyond it the delta swamps the base weight
)
MAX_RANK: Final = (
    4096  # no text-side K/V layer of a supported family is wider; at use it is capped at min(in, out)
)
MAX_STEPS: Final = 1_000_000  # optimisation or sampler steps
MAX_BATCH: Final = 65_536  # batch sizes, images, candidates
MAX_SEEDS: Final = 10_000  # images per prompt in an evaluation
#: A rank that is chosen per layer: the smallest within a residual target (``fmn_patch.format.lowrank.rank_for``).
AUTO: Final = "auto"
Rank = int | Literal["auto"]


def whole(value: object, name: str, low: int = 0, high: int | None = None, example: object = None) -> int:
    """An int in [low, high] (not a bool)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        hint = f", e.g. {example}" if example is not None else ""
        raise FmnPatchError(f"{name}={_show(value)} must be a whole number {bounds}{hint}")
    return value


def number(
    value: object,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    above: bool = False,
    below: bool = False,
    example: object = None,
) -> float:
    """A finite int or float in [low, high] (``above``: strictly greater than ``low``; ``below``: strictly less
    than ``high``)."""
    try:
        x = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int too large for a float
        x = math.nan
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if above else x >= low
    if ok and high is not None:
        ok = x < high if below else x <= high
    if not ok:
        parts = [f"{'>' if above else '>='} {low:g}"] if low is not None else []
        parts += [f"{'<' if below else '<='} {high:g}"] if high is not None else []
        bounds = (" " + " and ".join(parts)) if parts else ""
        hint = f", e.g. {example}" if example is not None else ""
        raise FmnPatchError(f"{name}={_show(value)} must be a finite number{bounds}{hint}")
    return x


def rank(value: object, name: str = "rank", example: object = 8) -> Rank:
    """A LoRA rank: a whole number from 1 to ``MAX_RANK`` (capped at min(in, out) where used), or ``"auto"``."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RANK:
        raise FmnPatchError(
            f"{name}={_show(value)} must be a whole number from 1 to {MAX_RANK} or {AUTO!r}, e.g. {example}"
        )
    return value


def rank_text(text: str, option: str = "--rank") -> Rank:
    """A rank typed at the command line: digits or ``auto``; anything else names the option and both forms."""
    if text.strip().lower() == AUTO:
        return AUTO
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise FmnPatchError(
            f"{option} {_show(text)} is not a rank; give a whole number from 1 to {MAX_RANK} (e.g. {option} 16) "
            f"or {option} {AUTO}"
        )
    return rank(int(digits), option.lstrip("-"), example=f"{option} 16 or {option} {AUTO}")


def residual(value: object, name: str = "max_residual") -> float:
    """A relative Frobenius residual ||D - B A|| / ||D|| to keep within: strictly between 0 and 1."""
    return number(value, name, 0, 1, above=True, below=True, example="0.2 (smaller: higher ranks)")


def seed(value: object, name: str = "seed") -> int:
    """A seed: a whole number from 0 to 2**63 - 1."""
    return whole(value, name, 0, MAX_SEED, example=0)


def weight(value: object, name: str = "weight") -> float:
    """The weight of a patch in a stack or a merge: finite, at most ``MAX_WEIGHT`` either way (negative inverts)."""
    return number(value, name, -MAX_WEIGHT, MAX_WEIGHT, example="0.5")


def flag(value: object, name: str, *, optional: bool = False) -> bool | None:
    """A yes/no setting: True or False (``optional``: or None, "decide for me"); 1, "no" or "False" are refused,
    not read by their truth."""
    if isinstance(value, bool) or (optional and value is None):
        return value
    also = " or None" if optional else ""
    raise FmnPatchError(f"{name}={_show(value)} must be True or False{also}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
