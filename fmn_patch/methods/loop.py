"""The one optimisation loop every trained method runs: re-steering, correction, the robust rounds, textual
inversion and the FMN baseline differ only in the parameters they train and the loss terms a step returns.

Each step returns named loss terms; the loop weighs and sums them, stops with a message (and writes nothing) on a
non-finite loss, clips, steps AdamW, times the step and reports it with its terms on the progress channel. Steps
draw their randomness from the generator they are handed, never from the global RNG.

A step may instead return its batch in chunks (an iterable of term dicts, each already weighed by its share of the
batch): the loop runs backward on each chunk as it comes and steps once on the summed gradient. The loss is the
same; only one chunk's activations are alive at a time (``TrainConfig.micro_batch``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import FmnPatchError
from ..progress import Phase, phase

#: Named loss terms of one batch (or of one chunk of it, weighed by the chunk's share).
Terms = dict[str, torch.Tensor]
#: A step: given the loop's generator, the terms of one batch, or of its chunks in turn.
Step = Callable[[torch.Generator], Terms | Iterable[Terms]]


@dataclass
class LoopConfig:
    """How the loop optimises: same config, step and seed give the same parameters."""

    steps: int
    lr: float
    seed: int = 0
    max_grad_norm: float | None = 1.0  # None: no clipping
    weight_decay: float = 0.0
    desc: str = "training"  # the phase's name on the progress channel
    hint: str = "lower --lr or the loss weights"  # what the divergence message suggests


@dataclass
class LoopReport:
    """What happened: the total loss and the wall time of every step, and the last step's terms."""

    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    parts: dict[str, float] = field(default_factory=dict)
    # work a method did outside the steps (e.g. a pool of targets): seconds and denoiser samples, by phase
    phases: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)


def optimise(
    params: Sequence[torch.Tensor],
    step: Step,
    config: LoopConfig,
    *,
    weights: Mapping[str, float] | None = None,
    after_step: Callable[[], None] | None = None,
    progress: bool = True,
) -> LoopReport:
    """Minimise the weighted sum of ``step``'s terms over ``params`` (weight 1 for a term ``weights`` omits)."""
    optimiser = torch.optim.AdamW(list(params), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    report = LoopReport()
    with phase(config.desc, config.steps, "steps") if progress else contextlib.nullcontext() as bar:
        for k in range(config.steps):
            tick = time.perf_counter()
            optimiser.zero_grad(set_to_none=True)
            result = step(gen)
            parts: Terms = {}
            loss = torch.zeros(())
            for chunk in [result] if isinstance(result, dict) else result:
                part = sum((weights or {}).get(name, 1.0) * term for name, term in chunk.items())
                assert isinstance(part, torch.Tensor), "a step returns at least one loss term"
                if not torch.isfinite(part):
                    raise FmnPatchError(
                        f"training diverged at step {k} (loss {float(part)}); nothing was written: "
                        f"{config.hint} (lr now {config.lr})"
                    )
                part.backward()
                loss = loss + part.detach().float().cpu()
                for name, term in chunk.items():
                    parts[name] = parts[name] + term.detach() if name in parts else term.detach()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimiser.step()
            if after_step is not None:
                after_step()
            report.step_seconds.append(time.perf_counter() - tick)
            report.losses.append(loss.item())
            report.parts = {name: round(term.item(), 6) for name, term in parts.items()}
            if isinstance(bar, Phase):
                bar.advance(note=_terms_note(loss.item(), report.parts))
    return report


def _terms_note(loss: float, parts: Mapping[str, float]) -> str:
    """``loss 0.1234`` and, where there are several, each term: what a step's report shows."""
    terms = "".join(f" {name} {value:.3f}" for name, value in parts.items()) if len(parts) > 1 else ""
    return f"loss {loss:.4f}{terms}"


def subsample(values: list[float], n: int) -> list[float]:
    """At most ``n`` evenly spaced values, first and last included (a loss curve for a patch header)."""
    if len(values) <= n:
        return [round(v, 6) for v in values]
    return [round(values[round(i * (len(values) - 1) / (n - 1))], 6) for i in range(n)]
