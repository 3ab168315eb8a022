"""How many torch threads a job runs with on the CPU: one for a toy-sized model, the caller's count otherwise.

A toy-sized denoiser (the toy UNet, toy-sd3, the tiny test pipelines) works on tensors too small to share between
threads: a second thread per job gains little when the job runs alone, and loses several times over as soon as
two jobs share two cores (measured in BENCHMARKS.md, "Torch threads for toy-sized training"). So a job on a denoiser of
fewer than ``SMALL`` parameters runs on one thread, and the caller's thread count is back when it returns.
``FMNPATCH_THREADS=N`` gives every job N threads instead, whatever its model's size.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Concatenate, ParamSpec, TypeVar

import torch

from ..errors import FmnPatchError
from .base import Base, BaseLike, as_base

#: Denoisers with fewer parameters than this are toy-sized: the largest toy has about 1M, SD 1.5's UNet 860M.
SMALL = 50_000_000
ENV = "FMNPATCH_THREADS"

P = ParamSpec("P")
R = TypeVar("R")


def job_threads(parameters: int) -> int | None:
    """Threads for a job on a model of `parameters` parameters; None keeps the caller's count."""
    chosen = os.environ.get(ENV)
    if chosen is not None:
        value = chosen.strip()
        if not (value.isascii() and value.isdigit()) or int(value) < 1:
            raise FmnPatchError(
                f"{ENV}={chosen!r} is not a thread count; give a whole number of 1 or more, e.g. 1"
            )
        return int(value)
    return 1 if parameters < SMALL else None


@contextmanager
def threads_for(module: torch.nn.Module) -> Iterator[int]:
    """Run the block with `job_threads` of `module`'s size; the caller's count is restored after it."""
    before = torch.get_num_threads()
    wanted = job_threads(sum(p.numel() for p in module.parameters()))
    if wanted is None or wanted == before:
        yield before
        return
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)


def sized_threads(fn: Callable[Concatenate[Base, P], R]) -> Callable[Concatenate[BaseLike, P], R]:
    """The edge of a public call: ``fn(base, ...)`` takes a ``Base`` or a diffusers pipeline, wrapped once here
    (``as_base``), and runs with the threads its base's size calls for; ``fn`` itself and everything below it take
    a ``Base``."""

    @functools.wraps(fn)
    def wrapper(base: BaseLike, *args: P.args, **kwargs: P.kwargs) -> R:
        base = as_base(base)
        with threads_for(base.family.adapters.denoiser):
            return fn(base, *args, **kwargs)

    return wrapper
