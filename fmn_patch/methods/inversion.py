"""Textual inversion: learn new token embeddings that make the frozen model draw a set of reference images.

FMN's optional stage A (for concepts a base model knows poorly by name), and the core of the Concept Inversion
attack. Only the new rows of the input embedding table train; the denoiser, the rest of the text encoder and the
tokenizer the pipeline came with are restored on exit (tokens are added to a copy, the table is shrunk back).

The learned embeddings are saved in the format stock diffusers reads with
``pipe.load_textual_inversion(path, token=...)``: one safetensors tensor (n, d) under the token's name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F

from .. import values
from ..families.base import Base
from ..families.family import Family
from ..families.grads import frozen
from ..families.threads import sized_threads
from ..files import atomic_write
from ..values import MAX_BATCH, MAX_STEPS
from .loop import LoopConfig, optimise


@dataclass
class InversionConfig:
    """FMN's stage A defaults, except the learning rate (per-token updates of a tiny table need a larger one)."""

    num_tokens: int = 4  # vectors that together stand for the concept
    steps: int = 500
    lr: float = 5e-3
    weight_decay: float = 0.1
    batch_size: int = 8
    template: str = "a photo of {}"
    seed: int = 0

    def __post_init__(self) -> None:
        values.whole(self.num_tokens, "num_tokens", 1, 75, example=4)
        values.whole(self.steps, "ti_steps", 1, MAX_STEPS, example=500)
        values.number(self.lr, "lr", 0, 10, above=True, example="5e-3")
        values.number(self.weight_decay, "weight_decay", 0, 100, example="0.1")
        values.whole(self.batch_size, "batch_size", 1, MAX_BATCH, example=8)
        values.seed(self.seed)


@dataclass
class LearnedTokens:
    """New tokens (``<name>``, ``<name>_1``, ...) and their embeddings (n, d)."""

    token: str
    embeddings: torch.Tensor
    losses: list[float]

    @property
    def words(self) -> str:
        return " ".join(self.names)

    @property
    def names(self) -> list[str]:
        return [self.token] + [f"{self.token}_{i}" for i in range(1, len(self.embeddings))]

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        tensors = {self.token: self.embeddings.contiguous()}
        return atomic_write(
            Path(path),
            lambda t: safetensors.torch.save_file(tensors, str(t), {"format": "pt"}),
            overwrite=overwrite,
        )


@sized_threads
def learn_tokens(
    base: Base,
    latents: torch.Tensor,
    token: str,
    init_words: str,
    config: InversionConfig | None = None,
    *,
    progress: bool = True,
) -> LearnedTokens:
    """Learn ``config.num_tokens`` embeddings for ``token`` from reference latents (N, C, h, w) by the plain
    noise-prediction loss on ``config.template`` prompts, everything else frozen."""
    config = config or InversionConfig()
    family = base.family
    family.text.require_one_encoder("textual inversion")
    names = [token] + [f"{token}_{i}" for i in range(1, config.num_tokens)]
    init_ids = list(family.text.token_ids(init_words)) or [family.text.end_id]
    with torch.no_grad():
        base_rows = family.text.token_table()[init_ids].mean(0)  # (d,)
    init = base_rows.repeat(config.num_tokens, 1)
    prompt = config.template.format(" ".join(names))
    with (
        frozen(family.adapters.denoiser, *family.text.text_encoders()),
        learnable_rows(family, names, init) as (vectors, write),
    ):

        def step(gen: torch.Generator) -> dict[str, torch.Tensor]:
            pick = torch.randint(len(latents), (config.batch_size,), generator=gen)
            x0 = latents[pick].to(family.adapters.device, family.adapters.dtype)
            t = torch.randint(0, family.noise.num_train_timesteps, (config.batch_size,), generator=gen).to(
                family.adapters.device
            )
            noise = torch.randn(x0.shape, generator=gen).to(x0)
            with torch.enable_grad():
                cond = family.text.encode_with_grad([prompt] * config.batch_size)
                pred = family.noise.denoise(family.noise.add_noise(x0, noise, t), t, cond)
                return {"denoise": F.mse_loss(pred.float(), family.noise.target(x0, noise, t).float())}

        def decay_and_write() -> None:
            with torch.no_grad():  # AdamW's decay, on the new rows alone
                vectors.sub_(config.lr * config.weight_decay * vectors)
            write()

        loop = LoopConfig(
            steps=config.steps,
            lr=config.lr,
            seed=config.seed,
            max_grad_norm=None,
            desc="learning concept tokens (textual inversion)",
            hint="lower the inversion learning rate",
        )
        report = optimise([vectors], step, loop, after_step=decay_and_write, progress=progress)
        learned = vectors.detach().to(family.text.token_table().dtype).clone()
    return LearnedTokens(token, learned, report.losses)


@contextlib.contextmanager
def learnable_rows(
    family: Family, names: Sequence[str], init: torch.Tensor
) -> Iterator[tuple[torch.Tensor, Callable[[], None]]]:
    """Add tokens ``names`` with rows ``init`` (count, d); yield float32 copies of their rows (count, d), the only
    parameters that learn, and ``write``, which puts them back into the table (call it after every step).

    The table's gradient is sparse (the rows a prompt used; a dense one is the whole vocabulary, 150 MB at CLIP-L)
    and reaches the copies through a hook, so no optimiser state or gradient of the whole table is ever held. The
    optimiser steps float32 copies: AdamW on a half-precision table divides the zero moments of every untouched
    row by an eps that rounds to 0 (NaN)."""
    count = len(names)
    with family.text.added_tokens(list(names), init, sparse=True) as weight:
        first = weight.shape[0] - count
        vectors = weight.detach()[first:].float().clone().requires_grad_(True)

        def to_vectors(grad: torch.Tensor) -> None:
            rows = _new_rows(grad, first, count)
            vectors.grad = rows if vectors.grad is None else vectors.grad + rows

        def write() -> None:
            with torch.no_grad():
                weight[first:] = vectors.to(weight.dtype)
                weight.grad = None

        hook = weight.register_hook(to_vectors)
        weight.requires_grad_(True)
        try:
            yield vectors, write
        finally:
            hook.remove()
            weight.requires_grad_(False)


def _new_rows(grad: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """The float32 gradient (count, d) of a table's last ``count`` rows (from row ``first``), dense or sparse."""
    if not grad.is_sparse:
        return grad[first:].float()
    grad = grad.coalesce()
    index, values = grad.indices()[0], grad.values()  # (k,), (k, d)
    new = index >= first
    rows = torch.zeros(count, grad.shape[1], dtype=torch.float32, device=grad.device)
    return rows.index_add_(0, index[new] - first, values[new].float())
