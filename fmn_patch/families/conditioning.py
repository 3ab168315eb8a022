"""What a family's denoiser is conditioned on, and where captured attention goes: the two values the roles pass
between a family and the methods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: A sink for attention probabilities: (layer name, probs (B, heads, image tokens, text tokens)).
Sink = Callable[[str, torch.Tensor], None]


@dataclass
class Conditioning:
    """What the denoiser is conditioned on for N prompts: text states (N, T, D) and family-specific extras
    (pooled embeddings, size ids, ...) as (N, ...) tensors. Only the family that made it reads the extras."""

    states: torch.Tensor
    added: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.states.shape[0]

    def select(self, index: torch.Tensor) -> Conditioning:
        added = {k: v[index] for k, v in self.added.items()} if self.added else None
        return Conditioning(self.states[index], added)

    def repeat_interleave(self, n: int) -> Conditioning:
        return self.select(torch.arange(len(self)).repeat_interleave(n))

    def expand(self, n: int) -> Conditioning:
        """One prompt's conditioning broadcast to ``n`` (a view: gradients flow back to the one prompt)."""
        added = {k: v.expand(n, *v.shape[1:]) for k, v in self.added.items()} if self.added else None
        return Conditioning(self.states.expand(n, *self.states.shape[1:]), added)

    def cat(self, other: Conditioning) -> Conditioning:
        added = (
            {k: torch.cat([v, other.added[k]]) for k, v in self.added.items()}
            if self.added and other.added
            else None
        )
        return Conditioning(torch.cat([self.states, other.states]), added)
