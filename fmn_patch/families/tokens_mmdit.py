"""Learned tokens in every text encoder of an MMDiT pipeline (textual inversion, Concept Inversion, prompt search).

SD3 reads a prompt with two CLIPs and T5, Flux with CLIP (pooled) and T5: a token that should stand for a concept
must exist in each of them. A learned token here is one vector per token holding every encoder's embedding side
by side ([CLIP-L | CLIP-G | T5] for SD3), so the methods that learn tokens for one-encoder models work unchanged:
``added_tokens`` adds the names to a copy of every tokenizer and gives every encoder a grown input table whose new
rows read their columns of that vector. ``token_table`` is indexed by the first (CLIP) tokenizer's ids; its T5
columns hold the mean T5 embedding of the token's word pieces (the T5 end-of-text row for special tokens).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FmnPatchError
from .text import Text


class GrownEmbedding(nn.Module):
    """An encoder's input table with rows ``ids`` read from ``learned[:, columns]`` (gradients flow to it)."""

    def __init__(self, original: nn.Embedding, learned: torch.Tensor, columns: slice, ids: list[int]) -> None:
        super().__init__()
        self.original = original
        self.learned = learned
        self.columns = columns
        self.ids = torch.tensor(ids)
        self.rows = max(original.num_embeddings, max(ids) + 1)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        table = self.original.weight
        if self.rows > table.shape[0]:
            table = torch.cat([table, table.new_zeros(self.rows - table.shape[0], table.shape[1])])
        return table.index_put((self.ids.to(table.device),), self.learned[:, self.columns].to(table))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight, self.original.padding_idx)


class LearnedTokens(Text):
    """Learned tokens across every text encoder; the text role lists its encoders and their tokenizers."""

    #: (encoder attribute, tokenizer attribute) per text encoder, the CLIP one that indexes the table first.
    token_encoders: tuple[tuple[str, str], ...]

    def _encoders(self) -> list[tuple[Any, str]]:
        out = []
        for enc, tok in self.token_encoders:
            encoder = getattr(self.pipe, enc, None)
            if encoder is not None:
                out.append((encoder, tok))
        return out

    def token_table(self) -> torch.Tensor:
        """(V, sum of widths): each first-tokenizer id's embedding in every encoder, side by side."""
        cached = getattr(self, "_joint_table", None)
        if cached is not None:
            return cached
        first = getattr(self.pipe, self._encoders()[0][1])
        vocab = len(first)
        pieces = [first.convert_ids_to_tokens(i) for i in range(vocab)]
        special = set(first.all_special_ids)
        columns = []
        for encoder, tok_name in self._encoders():
            table = encoder.get_input_embeddings().weight.detach()
            tokenizer = getattr(self.pipe, tok_name)
            if tokenizer.get_vocab() == first.get_vocab():  # a CLIP sharing the first vocabulary
                columns.append(table[:vocab])
                continue
            words = [p.removesuffix("</w>") if i not in special else "" for i, p in enumerate(pieces)]
            ids = tokenizer(words, add_special_tokens=False).input_ids
            eos = int(tokenizer.eos_token_id)
            ids = [row or [eos] for row in ids]
            flat = torch.tensor([i for row in ids for i in row], device=table.device)
            offsets = torch.tensor([0] + [len(r) for r in ids[:-1]], device=table.device).cumsum(0)
            columns.append(F.embedding_bag(flat, table, offsets, mode="mean"))
        joint = torch.cat([c.float().cpu() for c in columns], dim=-1)
        self._joint_table = joint
        return joint

    @contextlib.contextmanager
    def added_tokens(
        self, names: Sequence[str], init: torch.Tensor | None = None, *, sparse: bool = False
    ) -> Iterator[torch.Tensor]:
        """Within the block every tokenizer knows ``names`` (copies; put back on exit) and every encoder reads
        their rows from the yielded (n, sum of widths) tensor (its own: ``sparse`` changes nothing)."""
        encoders = self._encoders()
        widths = [e.get_input_embeddings().weight.shape[1] for e, _ in encoders]
        if init is not None and init.shape != (len(names), sum(widths)):
            raise FmnPatchError(
                f"learned token embeddings of shape {tuple(init.shape)} do not fit this base (needs "
                f"({len(names)}, {sum(widths)}): one vector per token across its text encoders)"
            )
        if init is None:
            init = self.token_table().mean(0).repeat(len(names), 1)
        learned = nn.Parameter(init.detach().clone().float())  # trainable, as a grown nn.Embedding table is
        before = {tok: getattr(self.pipe, tok) for _, tok in encoders}  # tokenizer and tokenizer_2 may be one
        copies: dict[int, Any] = {}
        for tokenizer in before.values():
            if id(tokenizer) not in copies:
                extended = copy.deepcopy(tokenizer)
                if extended.add_tokens(list(names)) != len(names):
                    raise FmnPatchError(
                        f"tokens {list(names)} already exist in the tokenizer; choose another name"
                    )
                copies[id(tokenizer)] = extended
        originals: list[tuple[Any, nn.Module]] = []
        try:
            start = 0
            for (encoder, tok), width in zip(encoders, widths, strict=True):
                extended = copies[id(before[tok])]
                setattr(self.pipe, tok, extended)
                ids = extended.convert_tokens_to_ids(list(names))
                original = encoder.get_input_embeddings()
                originals.append((encoder, original))
                encoder.set_input_embeddings(
                    GrownEmbedding(original, learned, slice(start, start + width), ids)
                )
                start += width
            yield learned
        finally:
            for encoder, original in originals:
                encoder.set_input_embeddings(original)
            for tok, tokenizer in before.items():
                setattr(self.pipe, tok, tokenizer)

    @property
    def expands_tokens(self) -> bool:
        """Flux's pipeline converts ``<t>`` into ``<t> <t>_1 ...`` itself (diffusers' textual-inversion mixin);
        SD3's does not."""
        from diffusers.loaders import TextualInversionLoaderMixin

        return isinstance(self.pipe, TextualInversionLoaderMixin)
