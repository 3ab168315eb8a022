"""Images in batches: the unit of evaluation work that processes share.

A batch is one pipeline call on one model state (the base, the base with patches, ... named by the caller), an
image per (prompt, seed) job from its own seeded generator; its images are judged as soon as they are drawn, each
for its own concept, and only the per-image scores (and the few images kept for grids) leave the batch. A batch's
result depends on the batch alone, so the batches of a job, fixed by the sampler's ``batch_size`` and never by the
number of processes, give the same numbers whether one process draws them all or ``accelerate launch`` shares
them out (``fmn_patch.processes.run_shared``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any

import torch

from ..concepts.bench import Concept
from ..families.base import Base
from ..processes import Throughput, run_shared
from .judges import Judge, class_index

#: Model states by name: each a function returning a context manager within which the pipeline is in that state.
States = Mapping[str, Callable[[], AbstractContextManager[Any]]]


@dataclass(frozen=True)
class ImageJob:
    """One image: its prompt and seed, the concept it is judged for (None: not judged), whether it is returned."""

    prompt: str
    seed: int
    concept: Concept | None = None
    keep: bool = False


@dataclass(frozen=True)
class ImageBatch:
    """One pipeline call on the model state ``model``."""

    model: str
    jobs: tuple[ImageJob, ...]
    steps: int
    guidance: float


@dataclass
class BatchResult:
    """What leaves a batch: per judged image (in job order) J_c(x) and whether c is the judge's top class, and the
    kept images (k, 3, H, W)."""

    probs: list[float]
    hits: list[bool]
    images: torch.Tensor | None
    seconds: float


def batches(model: str, jobs: Sequence[ImageJob], steps: int, guidance: float, size: int) -> list[ImageBatch]:
    """``jobs`` in pipeline calls of ``size`` images, in order."""
    return [ImageBatch(model, tuple(jobs[i : i + size]), steps, guidance) for i in range(0, len(jobs), size)]


class ModelStates:
    """Keeps the pipeline in one named state at a time, entering another only when a batch needs it."""

    def __init__(self, states: States) -> None:
        self.states = states
        self.key: str | None = None
        self.stack = ExitStack()

    def use(self, key: str) -> None:
        if key != self.key:
            self.close()
            self.stack.enter_context(self.states[key]())
            self.key = key

    def close(self) -> None:
        self.stack.close()
        self.stack, self.key = ExitStack(), None


def run_batches(
    base: Base,
    work: Sequence[ImageBatch],
    judge: Judge | None,
    states: States,
    *,
    progress: bool = True,
    what: str = "generating",
) -> tuple[list[BatchResult], Throughput]:
    """Draw and judge every batch, shared between the job's processes; the results, in batch order, on every one."""
    family = base.family
    concepts = {j.concept.name: j.concept for b in work for j in b.jobs if j.concept is not None}
    if concepts and judge is None:
        raise ValueError("batches with concepts to judge need a judge")
    for concept in concepts.values():  # an unknown concept fails before anything is drawn
        class_index(judge, concept)  # type: ignore[arg-type]
    held = ModelStates(states)

    def draw(batch: ImageBatch) -> BatchResult:
        started = time.perf_counter()
        held.use(batch.model)
        images = family.images.draw(
            [(j.prompt, j.seed) for j in batch.jobs], steps=batch.steps, guidance=batch.guidance
        )
        probs, hits = _judged(judge, images, batch.jobs)
        kept = [i for i, j in enumerate(batch.jobs) if j.keep]
        return BatchResult(probs, hits, images[kept] if kept else None, time.perf_counter() - started)

    try:
        return run_shared(work, draw, size=lambda b: len(b.jobs), what=what, unit="images", progress=progress)
    finally:
        held.close()


def _judged(
    judge: Judge | None, images: torch.Tensor, jobs: Sequence[ImageJob]
) -> tuple[list[float], list[bool]]:
    """J_c(x) and top-class hits of the judged jobs, one judge call per category present, in job order."""
    probs: dict[int, float] = {}
    hits: dict[int, bool] = {}
    judged = [(i, j.concept) for i, j in enumerate(jobs) if j.concept is not None]
    for category in dict.fromkeys(c.category for _, c in judged):
        rows = [(i, c) for i, c in judged if c.category == category]
        p = judge.category_probs(images[[i for i, _ in rows]], category)  # type: ignore[union-attr]  # (n, classes)
        top = p.argmax(-1)
        for r, (i, c) in enumerate(rows):
            idx = class_index(judge, c)  # type: ignore[arg-type]
            probs[i], hits[i] = float(p[r, idx]), bool(top[r] == idx)
    order = [i for i, _ in judged]
    return [probs[i] for i in order], [hits[i] for i in order]


def mean_scores(probs: Iterable[float], hits: Iterable[bool]) -> tuple[float, float]:
    """(M-Score, acc) over images: the mean J_c(x), and the share of images whose top class is c."""
    p = torch.tensor(list(probs), dtype=torch.float32)
    h = torch.tensor(list(hits), dtype=torch.float32)
    return float(p.mean()), float(h.mean())
