"""The objectives of forgetting, as short pure tensor functions.

References: Forget-Me-Not (Zhang et al. 2023) for attention re-steering; ESD (Gandikota et al. 2023) for the
negatively guided denoising target; UCE / MACE for keeping other concepts' keys and values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def attention_mass(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean attention that pixels pay to the masked token positions: 0 when the concept gets no attention.

    probs: (B, h, N, T) softmax over tokens; mask: (B, T) 1 at the concept's positions. Returns a scalar in [0, 1].
    """
    mass = (probs * mask[:, None, None, :].to(probs.dtype)).sum(-1)  # (B, h, N)
    return mass.mean()


def resteer_loss(maps: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Attention re-steering: the attention mass at the concept's positions, averaged over layers."""
    return torch.stack([attention_mass(p, mask) for p in maps]).mean()


def fmn_loss(maps: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Forget-Me-Not's released loss: the (unsquared) L2 norm of all probabilities at the concept's positions,
    concatenated over layers, heads and pixels. mask: (B, T); maps: (B, h, N, T) each."""
    picked = [p.permute(0, 3, 1, 2)[mask.bool()] for p in maps]  # each (positions, h, N)
    return torch.cat([x.flatten() for x in picked]).norm()


def guided_target(
    eps_concept: torch.Tensor, eps_anchor: torch.Tensor, eta: float | torch.Tensor
) -> torch.Tensor:
    """The noise the patched model should predict for the concept's prompt: the anchor's prediction, pushed
    ``eta`` further away from the concept (ESD's negative guidance with the anchor as origin). (B, C, H, W);
    ``eta`` a number or one per sample, (B, 1, 1, 1)."""
    return eps_anchor - eta * (eps_concept - eps_anchor)


def preservation(delta_out: torch.Tensor) -> torch.Tensor:
    """How far a patched projection moved the keys/values of tokens that must be kept: mean squared change.

    delta_out: (M, out) = patched(x) - base(x) for preserve token states x."""
    return delta_out.square().mean()
