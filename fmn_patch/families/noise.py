"""The denoising role (``family.noise``): the forward process and one prediction of the denoiser, in the family's
own parametrisation (eps, v or flow), so that the losses are written once.

A family answers how clean latents are noised (``add_noise``), what its denoiser predicts there (``target``), the
prediction itself (``denoise``) and how its attention is read (``capture_attention``). What a preservation term
keeps defaults to the text encoder's states (a UNet's cross-attention reads nothing else)."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from .conditioning import Conditioning, Sink
from .role import Role


class Noise(Role, ABC):
    """Noising, the prediction target, one denoiser call, and attention capture."""

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for clean latents x0 (B, ...), noise and integer timesteps t (B,)."""

    @abstractmethod
    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What ``denoise`` predicts at x_t in the family's parametrisation (eps, v or flow)."""

    @abstractmethod
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """One prediction of the denoiser, in the same parametrisation as ``target``."""

    def preserve_inputs(
        self, prompts: Sequence[str], latents: torch.Tensor | None = None, *, seed: int = 0
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """What the targets read for prompts whose keys and values must not move: one (M, in) tensor for every
        target where they read the text encoder's output alone (a UNet's cross-attention: every token of every
        prompt, no denoiser pass), else {target: (M, in)} (families whose text stream also reads the image)."""
        return self.family.text.encode(prompts).states.flatten(0, 1)

    @abstractmethod
    def capture_attention(self, sink: Sink) -> contextlib.AbstractContextManager[list[str]]:
        """Within the block, every targeted attention layer hands its image-query to text-key probabilities
        (B, heads, image tokens, text tokens) to ``sink``; yields the captured layer names."""
