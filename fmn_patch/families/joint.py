"""What MMDiT families share about joint attention: where a concept sits in the joint text sequence, reading
image-query to text-key attention, and capturing the inputs of the text-side projections.

In an MMDiT the text tokens are one stream beside the image tokens; each joint attention projects the text stream
with ``attn.add_k_proj`` / ``add_v_proj`` and attends over [image, text] (SD3) or [text, image] (Flux) keys. The
text sequence is the concatenation of each encoder's part (SD3: CLIP then T5; Flux: T5 alone), so a concept sits
in several places: ``JointPlacement`` holds one ``Placement`` per part, offset into the joint sequence.

``capture_joint_attention`` wraps the attention processors of the targeted layers: the wrapper computes the
softmax of image queries over all keys (the same RMS norms and, for Flux, RoPE) to hand the image-to-text block to
the sink, and then calls the original processor unchanged, so the layer's output is the stock one, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .tokens import Placement

Sink = Callable[[str, torch.Tensor], None]


@dataclass(frozen=True)
class JointPlacement:
    """A concept's placements in every text encoder's part of the joint sequence."""

    prompt: str
    parts: tuple[tuple[int, Placement], ...]  # (offset of the part in the joint sequence, placement in it)

    @property
    def concept(self) -> tuple[int, ...]:
        return tuple(off + p for off, pl in self.parts for p in pl.concept)

    def positions(self, *, after: bool = False, padding: bool = False) -> tuple[int, ...]:
        """The concept's positions in every part, optionally with those after it (to the part's end-of-text
        token) and the padding, as joint-sequence indices."""
        return tuple(
            sorted(off + p for off, pl in self.parts for p in pl.positions(after=after, padding=padding))
        )


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, heads * d) -> (B, heads, S, d)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def sd3_probs(attn: Any, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Image-query to text-key probabilities of an SD3 joint attention, (B, heads, N, T): softmax over the
    [image, text] keys as ``JointAttnProcessor2_0`` computes it."""
    query = _heads(attn.to_q(hidden), attn.heads)  # (B, h, N, d)
    key = _heads(attn.to_k(hidden), attn.heads)
    text_key = _heads(attn.add_k_proj(context), attn.heads)  # (B, h, T, d)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if attn.norm_added_k is not None:
        text_key = attn.norm_added_k(text_key)
    scores = query @ torch.cat([key, text_key], dim=2).transpose(-1, -2) * query.shape[-1] ** -0.5
    return scores.softmax(-1)[..., key.shape[2] :]  # (B, h, N, T)


def flux_probs(attn: Any, hidden: torch.Tensor, context: torch.Tensor, rotary: Any) -> torch.Tensor:
    """Image-query to text-key probabilities of a Flux double-stream attention, (B, heads, N, T): RMS norms,
    then RoPE over the [text, image] sequence (text ids are zeros), then the softmax, as ``FluxAttnProcessor``."""
    from diffusers.models.embeddings import apply_rotary_emb

    d = attn.head_dim
    query = attn.norm_q(attn.to_q(hidden).unflatten(-1, (-1, d)))  # (B, N, h, d)
    key = attn.norm_k(attn.to_k(hidden).unflatten(-1, (-1, d)))
    text_query = attn.norm_added_q(attn.add_q_proj(context).unflatten(-1, (-1, d)))  # (B, T, h, d)
    text_key = attn.norm_added_k(attn.add_k_proj(context).unflatten(-1, (-1, d)))
    query = torch.cat([text_query, query], dim=1)
    key = torch.cat([text_key, key], dim=1)
    if rotary is not None:
        query = apply_rotary_emb(query, rotary, sequence_dim=1)
        key = apply_rotary_emb(key, rotary, sequence_dim=1)
    tokens = context.shape[1]
    query, key = query[:, tokens:].transpose(1, 2), key.transpose(1, 2)  # (B, h, N, d), (B, h, T + N, d)
    scores = query @ key.transpose(-1, -2) * d**-0.5
    return scores.softmax(-1)[..., :tokens]  # (B, h, N, T)


class CaptureWrapper:
    """Hands a joint attention's image-to-text probabilities to the sink, then runs the original processor."""

    def __init__(self, original: Any, name: str, sink: Sink, probs: Callable[..., torch.Tensor]) -> None:
        self.original = original
        self.name = name
        self.sink = sink
        self.probs = probs

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if encoder_hidden_states is not None:  # SD3.5's attn2 (image tokens only) has no text to read
            extra = (kwargs.get("image_rotary_emb"),) if self.probs is flux_probs else ()
            self.sink(self.name, self.probs(attn, hidden_states, encoder_hidden_states, *extra))
        return self.original(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


@contextmanager
def capture_joint_attention(
    denoiser: Any, layers: Sequence[str], sink: Sink, probs: Callable[..., torch.Tensor]
) -> Iterator[list[str]]:
    """Within the block, the attention modules named in ``layers`` report their image-to-text probabilities to
    ``sink`` (in the order they run); yields the captured names, restores the processors on exit."""
    previous = dict(denoiser.attn_processors)
    wanted = set(layers)
    processors: dict[str, Any] = {}
    captured: list[str] = []
    for key, processor in previous.items():
        name = key.removesuffix(".processor")
        if name in wanted:
            processors[key] = CaptureWrapper(processor, name, sink, probs)
            captured.append(name)
        else:
            processors[key] = processor
    denoiser.set_attn_processor(processors)
    try:
        yield captured
    finally:
        denoiser.set_attn_processor(previous)


@contextmanager
def recorded_inputs(modules: Mapping[str, torch.nn.Module]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within the block, every call of each module appends its input (detached) to ``record[name]``."""
    record: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    handles = []
    for name, module in modules.items():

        def hook(_module: Any, args: tuple[Any, ...], name: str = name) -> None:
            record[name].append(args[0].detach())

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()
