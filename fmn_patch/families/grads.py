"""``requires_grad`` flags around library calls: what a block changes is put back on exit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def kept_grads(*modules: nn.Module) -> Iterator[None]:
    """Within the block ``requires_grad`` flags may change (peft's adapter verbs set them); each parameter that
    existed on entry gets its flag back on exit."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Within the block every parameter of ``modules`` has ``requires_grad=False``; each flag is restored after."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
