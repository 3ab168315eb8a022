"""Gradient checkpointing of a family's denoiser, switched on for one block of code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .family import Family


@contextlib.contextmanager
def gradient_checkpointing(family: Family, enabled: bool = True) -> Iterator[None]:
    """Within the block (when ``enabled``) the denoiser recomputes activations in backward instead of keeping them
    (diffusers' ``enable_gradient_checkpointing``): less memory for about one more forward pass. Every forward runs
    twice under autograd, so an attention sink sees each layer twice per step. The denoiser's own setting comes back
    on exit."""
    denoiser = family.adapters.denoiser
    switch = enabled and not getattr(denoiser, "is_gradient_checkpointing", False)
    if switch:
        denoiser.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if switch:
            denoiser.disable_gradient_checkpointing()
