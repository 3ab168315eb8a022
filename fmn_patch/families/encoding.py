"""Text states at true length, for the closed-form edit.

``TextStates``: the states the cross-attention reads, computed at each prompt's true token length. Through CLIP's
causal mask a token's state depends only on the tokens before it, so encoding a prompt at its true length (instead
of padded to 77) gives the same states for its real tokens at a fraction of the cost; the padding slots that matter
are encoded on request. ``tests/test_edit.py`` checks both against the pipelines' ``encode_prompt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class TextStates:
    """The text states the UNet's cross-attention reads, for prompts at their true token length.

    SD 1.x/2.x: the text encoder's last hidden state; SDXL: both encoders' penultimate states, concatenated
    (exactly what the pipelines' ``encode_prompt`` gives, without its padding to the max length).
    """

    def __init__(self, tokenizer: Any, parts: list[tuple[Any, Any, int | None]]) -> None:
        """``parts``: (encoder, its tokenizer, hidden layer or None for the last state) per text encoder."""
        self.tokenizer = tokenizer
        self.parts = parts
        self.max_length = int(self.tokenizer.model_max_length)

    def ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """True-length token ids (BOS .. EOS) of each prompt, truncated at the max length."""
        return self.tokenizer(list(prompts), truncation=True, max_length=self.max_length).input_ids

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], padding: int) -> torch.Tensor:
        """(B, T, dim) float32 states, T = the longest true length + ``padding`` (capped at the max length).

        Shorter prompts are padded with the tokenizer's pad token, exactly as the pipeline pads them: the causal
        mask keeps padding out of the real tokens' states, and the padding slots are the pipeline's own.
        """
        states = []
        for encoder, tokenizer, layer in self.parts:
            ids = tokenizer(list(prompts), truncation=True, max_length=self.max_length).input_ids
            length = min(max(map(len, ids)) + padding, self.max_length)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            batch = torch.tensor([row + [pad] * (length - len(row)) for row in ids], device=encoder.device)
            if layer is None:
                states.append(encoder(batch)[0])
            else:
                states.append(encoder(batch, output_hidden_states=True).hidden_states[layer])
        return torch.cat(states, dim=-1).float().cpu()

    def rows(self, prompts: Sequence[str], padding: int) -> torch.Tensor:
        """(total rows, dim): each prompt's own rows one after another, BOS .. EOS and up to ``padding`` padding
        slots after it (capped at the max length)."""
        states = self.encode(prompts, padding)
        lengths = [min(len(ids) + padding, self.max_length) for ids in self.ids(prompts)]
        return torch.cat([s[:n] for s, n in zip(states, lengths, strict=True)])


def align(
    erase_ids: Sequence[int], anchor_ids: Sequence[int], start: int, n: int
) -> list[tuple[int, int]] | None:
    """Pairs (erase position, anchor position) for a prompt whose concept (n tokens at ``start``) became the anchor.

    The concept's tokens map onto the anchor's (the last one repeated; an empty anchor: the token now in its
    place), later positions keep their offset from the end. None when the rest of the prompt does not tokenize
    the same around the two (then the pair is skipped).
    """
    m = len(anchor_ids) - len(erase_ids) + n
    if m < 0 or list(erase_ids[:start]) != list(anchor_ids[:start]):
        return None
    if list(erase_ids[start + n :]) != list(anchor_ids[start + m :]):
        return None
    pairs = [(start + k, start + min(k, m - 1) if m else start) for k in range(n)]
    pairs += [(p, p - n + m) for p in range(start + n, len(erase_ids))]
    return pairs
