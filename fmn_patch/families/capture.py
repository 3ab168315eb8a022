"""Reading UNet cross-attention maps: a diffusers attention processor for ``attn2`` layers only.

Every other layer keeps its own (fast, fused) processor. The capture processor computes attention as diffusers'
``AttnProcessor`` does, with an explicit softmax, and hands the probabilities (B, heads, pixels, tokens) of each
cross-attention layer to a sink, in the order the layers run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

Sink = Callable[[str, torch.Tensor], None]


class CaptureProcessor:
    """Cross-attention that reports its probabilities; numerically the same as diffusers' ``AttnProcessor``."""

    def __init__(self, name: str, sink: Sink) -> None:
        self.name = name
        self.sink = sink

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, tokens, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)  # (B, N, inner)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (B*h, T, d)
        value = attn.head_to_batch_dim(attn.to_v(context))  # (B*h, T, d)
        query = attn.head_to_batch_dim(query)  # (B*h, N, d)
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*h, N, T)
        self.sink(self.name, probs.view(batch, attn.heads, *probs.shape[1:]))  # (B, h, N, T)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))  # (B, N, inner)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def capture_cross_attention(unet: Any, sink: Sink, layer: str = "attn2") -> Iterator[list[str]]:
    """Within the block, every ``layer`` attention of ``unet`` reports its probabilities to ``sink``.

    Yields the names of the captured layers; restores the previous processors on exit.
    """
    previous = dict(unet.attn_processors)
    processors: dict[str, Any] = {}
    captured = []
    for name, processor in previous.items():
        if name.removesuffix(".processor").endswith(f".{layer}"):
            processors[name] = CaptureProcessor(name.removesuffix(".processor"), sink)
            captured.append(name.removesuffix(".processor"))
        else:
            processors[name] = processor
    unet.set_attn_processor(processors)
    try:
        yield captured
    finally:
        unet.set_attn_processor(previous)
