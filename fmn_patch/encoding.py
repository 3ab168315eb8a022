"""Text encoding for direct UNet calls: encoder states for SD 1.x/2.x, plus pooled embeddings and size ids for
SDXL. Uses each pipeline's public ``encode_prompt``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Conditioning:
    """Encoder states (N, T, D) and, for SDXL, the ``added_cond_kwargs`` tensors (N, ...)."""

    states: torch.Tensor
    added: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.states.shape[0]

    def select(self, index: torch.Tensor) -> Conditioning:
        added = {k: v[index] for k, v in self.added.items()} if self.added else None
        return Conditioning(self.states[index], added)

    def cat(self, other: Conditioning) -> Conditioning:
        added = (
            {k: torch.cat([v, other.added[k]]) for k, v in self.added.items()}
            if self.added and other.added
            else None
        )
        return Conditioning(torch.cat([self.states, other.states]), added)

    def unet_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.states}
        if self.added is not None:
            kwargs["added_cond_kwargs"] = self.added
        return kwargs


@torch.no_grad()
def encode(pipe: Any, prompts: Sequence[str], batch_size: int = 64) -> Conditioning:
    """Encode prompts with the pipeline's own text encoder(s), without classifier-free guidance duplication."""
    device = pipe.unet.device
    parts: list[Conditioning] = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=chunk, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
            time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=embeds.dtype).repeat(
                len(chunk), 1
            )
            parts.append(Conditioning(embeds, {"text_embeds": pooled, "time_ids": time_ids.to(device)}))
        else:
            embeds, _ = pipe.encode_prompt(chunk, device, 1, False)
            parts.append(Conditioning(embeds))
    out = parts[0]
    for part in parts[1:]:
        out = out.cat(part)
    return out
