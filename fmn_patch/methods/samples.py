"""What a re-steering step trains on: noised samples of the reference latents and their guided denoising targets.

The guided target of a sample needs the frozen base's own predictions for the concept's prompt and for its anchor's,
two no-grad denoiser passes. The base never changes while a patch trains, so for a fixed pool of (latent, t, noise)
samples the targets can be computed once and every step draws from the pool (``TrainConfig.pool``); without a pool
each step draws fresh samples and pays the two passes itself. Steps can also run below the base's image size
(``TrainConfig.train_size``): the text-side keys and values a patch changes see only the prompt, never the pixels;
the reference latents are then area-downsampled.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..families.family import Family
from ..progress import phase
from .lora import LoraSession
from .losses import guided_target

if TYPE_CHECKING:
    from .dataset import TrainingSet


@dataclass
class Samples:
    """Noised samples: which prompt each belongs to, x_t, t and (when known) the guided denoising target."""

    prompt: torch.Tensor  # (B,) index of each sample's prompt in the training set
    x_t: torch.Tensor  # (B, C, h, w)
    t: torch.Tensor  # (B,)
    target: torch.Tensor | None = None  # (B, C, h, w)

    def __len__(self) -> int:
        return len(self.prompt)

    def select(self, index: torch.Tensor | slice) -> Samples:
        target = self.target[index] if self.target is not None else None
        return Samples(self.prompt[index], self.x_t[index], self.t[index], target)


def draw(family: Family, batch: TrainingSet, count: int, gen: torch.Generator) -> Samples:
    """``count`` samples: reference latents picked at random, noised at t ~ U[0, T) with fresh noise."""
    pick = torch.randint(len(batch.latents), (count,), generator=gen)
    x0 = batch.latents[pick].to(family.adapters.device, family.adapters.dtype)
    t = torch.randint(0, family.noise.num_train_timesteps, (count,), generator=gen).to(family.adapters.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0)
    return Samples(batch.latent_prompt[pick], family.noise.add_noise(x0, noise, t), t)


@torch.no_grad()
def guided_targets(
    session: LoraSession,
    batch: TrainingSet,
    samples: Samples,
    chunk: int,
    on_chunk: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The base's (adapter off) guided target of every sample, ``chunk`` samples (two passes each) per call;
    ``on_chunk(n)`` after each call of ``n`` samples."""
    family = session.base.family
    parts = []
    for i in range(0, len(samples), chunk):
        s = samples.select(slice(i, i + chunk))
        with session.disabled():
            both = batch.concept.select(s.prompt).cat(batch.anchor.select(s.prompt))
            eps_c, eps_a = family.noise.denoise(torch.cat([s.x_t, s.x_t]), torch.cat([s.t, s.t]), both).chunk(
                2
            )
        eta = batch.eta[s.prompt].to(eps_c).view(-1, *[1] * (eps_c.ndim - 1))
        parts.append(guided_target(eps_c, eps_a, eta))
        if on_chunk is not None:
            on_chunk(len(s))
    return torch.cat(parts)


def sample_pool(
    session: LoraSession, batch: TrainingSet, size: int, *, seed: int, chunk: int, targets: bool
) -> Samples:
    """A fixed pool of ``size`` samples drawn with ``seed``, with their guided targets when ``targets``."""
    pool = draw(session.base.family, batch, size, torch.Generator().manual_seed(seed))
    if targets:
        with phase("denoising the target pool", size, "samples") as p:
            pool.target = guided_targets(session, batch, pool, chunk, on_chunk=p.advance)
    return pool


# Samples (steps x batch) below which a start from zero was measured not to forget on toy-sd3 (BENCHMARKS.md); the
# budget a start from zero gets by default (methods/budget.py, FROM_ZERO) has this many.
ZERO_START_SAMPLES = 1200


def warn_zero_start(steps: int, batch_size: int) -> None:
    """Warn when a run that starts from zero (a family without a closed-form start) is given too few samples."""
    if steps * batch_size < ZERO_START_SAMPLES:
        warnings.warn(
            f"this family has no closed-form start, so training starts from zero, and {steps} x {batch_size} "
            "samples is too few from zero (the concept may not go at all); leave --steps and --batch-size "
            "to the default (150 x 8 from zero) or give at least as many",
            UserWarning,
            stacklevel=3,
        )
