"""Sampler steps on the progress channel: one image of a full-size model on a CPU takes minutes, so drawing
reports every step of every image, through diffusers' own ``callback_on_step_end``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..progress import Phase


def step_reporter(bar: object, first: int, count: int, total: int) -> Callable[[], None] | None:
    """What a pipeline call of images ``first``..``first + count - 1`` (of ``total``) does after each step: count
    a step of each on ``bar`` (None where ``bar`` is not a reported phase)."""
    if not isinstance(bar, Phase):
        return None
    last = first + count - 1
    note = f"image {first + 1} of {total}" if count == 1 else f"images {first + 1}-{last + 1} of {total}"
    return lambda: bar.advance(count, note)


def step_callback(on_step: Callable[[], None]) -> Callable[..., dict[str, Any]]:
    """``on_step`` as diffusers' ``callback_on_step_end``, which hands back the tensors it was given."""

    def callback(_pipe: Any, _step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        on_step()
        return tensors

    return callback
