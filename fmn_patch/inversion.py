"""Textual inversion: learn new token embeddings that make the frozen model draw a set of reference images.

FMN's optional stage A (for concepts a base model knows poorly by name), and the core of the Concept Inversion
attack. Only the new rows of the input embedding table train; the UNet, the rest of the text encoder and the
tokenizer the pipeline came with are restored on exit (tokens are added to a copy, the table is shrunk back).

The learned embeddings are saved in the format stock diffusers reads with
``pipe.load_textual_inversion(path, token=...)``: one safetensors tensor (n, d) under the token's name.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .encoding import encode
from .errors import FmnPatchError
from .patch import atomic_write


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


@contextmanager
def added_tokens(pipe: Any, names: Sequence[str], init: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Within the block, ``pipe`` knows ``names`` as new tokens; yields their (trainable) rows of the table."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    original = encoder.get_input_embeddings()  # (V, d)
    extended = copy.deepcopy(tokenizer)
    if extended.add_tokens(list(names)) != len(names):
        raise FmnPatchError(f"tokens {list(names)} already exist in the tokenizer; choose another name")
    rows, dim = original.weight.shape
    table = torch.nn.Embedding(len(extended), dim).to(original.weight.device, original.weight.dtype)
    with torch.no_grad():
        table.weight[:rows] = original.weight
        table.weight[rows:] = init.to(table.weight) if init is not None else original.weight.mean(0)
    encoder.set_input_embeddings(table)
    pipe.tokenizer = extended
    try:
        yield table.weight
    finally:
        pipe.tokenizer = tokenizer
        encoder.set_input_embeddings(original)


def learn_tokens(
    pipe: Any,
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
    encoder, unet = pipe.text_encoder, pipe.unet
    names = [token] + [f"{token}_{i}" for i in range(1, config.num_tokens)]
    init_ids = pipe.tokenizer(init_words, add_special_tokens=False).input_ids or [pipe.tokenizer.eos_token_id]
    with torch.no_grad():
        base_rows = encoder.get_input_embeddings().weight[init_ids].mean(0)  # (d,)
    init = base_rows.repeat(config.num_tokens, 1)
    prompt = config.template.format(" ".join(names))
    gen = torch.Generator().manual_seed(config.seed)
    num_t = int(pipe.scheduler.config.num_train_timesteps)
    losses: list[float] = []
    requires = [p.requires_grad for p in encoder.parameters()]
    unet.requires_grad_(False)
    encoder.requires_grad_(False)
    with added_tokens(pipe, names, init) as weight:
        first = weight.shape[0] - config.num_tokens
        weight.requires_grad_(True)
        optimiser = torch.optim.AdamW([weight], lr=config.lr, weight_decay=0.0)
        frozen = weight.detach().clone()
        try:
            for _ in tqdm(
                range(config.steps), desc="inversion", disable=not progress, file=sys.stderr, leave=False
            ):
                pick = torch.randint(len(latents), (config.batch_size,), generator=gen)
                x0 = latents[pick].to(unet.device, unet.dtype)
                t = torch.randint(0, num_t, (config.batch_size,), generator=gen).to(unet.device)
                noise = torch.randn(x0.shape, generator=gen).to(x0)
                with torch.enable_grad():
                    cond = _encode_with_grad(pipe, [prompt] * config.batch_size)
                    pred = unet(pipe.scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
                    loss = F.mse_loss(pred.float(), _target(pipe, x0, noise, t).float())
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                with torch.no_grad():  # only the new rows learn; AdamW's decay applied to them alone
                    weight[:first] = frozen[:first]
                    weight[first:] -= config.lr * config.weight_decay * weight[first:]
                losses.append(float(loss.detach()))
        finally:
            weight.requires_grad_(False)
        learned = weight[first:].detach().clone()
    for p, r in zip(encoder.parameters(), requires, strict=True):
        p.requires_grad_(r)
    return LearnedTokens(token, learned, losses)


def _encode_with_grad(pipe: Any, prompts: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer(
        prompts,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0]


def _target(pipe: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if pipe.scheduler.config.prediction_type == "v_prediction":
        return pipe.scheduler.get_velocity(x0, noise, t)
    return noise


__all__ = ["InversionConfig", "LearnedTokens", "added_tokens", "encode", "learn_tokens"]
