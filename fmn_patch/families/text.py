"""The text role (``family.text``): how prompts become the denoiser's conditioning, and where a concept's tokens
sit in them.

A family answers three questions: its ``tokenizer`` (the one concepts are placed with), ``encode`` (conditioning as
the pipeline makes it) and ``text_states`` (the states its targets read, at true length, for the closed-form edit).
Placing words among tokens is the same for every tokenizer and is implemented here. Learning new tokens (textual
inversion, Concept Inversion, prompt search) is offered by families whose text role overrides the learned-token
part; the defaults refuse in one line."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import FmnPatchError
from .conditioning import Conditioning
from .role import Role
from .tokens import Placement


class Text(Role, ABC):
    """Prompts to conditioning, and token positions in them."""

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The tokenizer concepts are placed with (the first one where there are several)."""

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def end_id(self) -> int:
        """The tokenizer's end-of-text id (where a learned token starts when no init word is given)."""
        return int(self.tokenizer.eos_token_id)

    @abstractmethod
    def encode(self, prompts: Sequence[str], batch_size: int = 64) -> Conditioning:
        """Conditioning for the denoiser, padded as the pipeline pads, without classifier-free duplication."""

    @abstractmethod
    def text_states(self) -> Any:
        """The text states the targets read, at each prompt's true length (``encoding.TextStates``)."""

    def text_encoders(self) -> list[nn.Module]:
        """The text encoder modules (frozen while tokens are learned)."""
        return []

    def place(self, prompt: str, concept: str) -> Placement:
        """Where ``concept``'s tokens (and the positions after it) sit in ``prompt``."""
        from .tokens import place

        return place(self.tokenizer, prompt, concept, max_length=self.max_length)

    def concept_ids(self, words: str) -> tuple[int, ...]:
        from .tokens import concept_ids

        return concept_ids(self.tokenizer, words)

    def token_ids(self, text: str) -> tuple[int, ...]:
        """Token ids of ``text`` without special tokens."""
        return tuple(self.tokenizer(text, add_special_tokens=False).input_ids)

    def common_words(self, count: int) -> list[str]:
        """The tokenizer's ``count`` most frequent whole words (the edit preserves their keys/values)."""
        from .tokens import common_words

        return common_words(self.tokenizer, count)

    def word_tokens(self) -> dict[int, str]:
        """The tokens that are whole words, {id: word} (the prompt search picks from them)."""
        from .tokens import word_tokens

        return word_tokens(self.tokenizer)

    # ------------------------------------------------------------------------------------ learned tokens
    def require_one_encoder(self, what: str) -> None:
        """Refuse (one line) where ``what`` (a method that learns tokens) does not serve this base."""
        family = self.family
        raise FmnPatchError(
            f"{what} is not available for the {family.name} family ({family.identity.architecture()})"
        )

    def token_table(self) -> torch.Tensor:
        """The input embedding table (V, d) of the text encoder."""
        self.require_one_encoder("textual inversion")
        raise AssertionError  # pragma: no cover

    def added_tokens(
        self, names: Sequence[str], init: torch.Tensor | None = None, *, sparse: bool = False
    ) -> contextlib.AbstractContextManager[torch.Tensor]:
        """Within the block the pipeline knows ``names`` as new tokens; yields their rows of the table. ``sparse``:
        where the yielded tensor is a whole grown table, its gradient holds only the rows a prompt used."""
        self.require_one_encoder("textual inversion")
        raise AssertionError  # pragma: no cover

    @property
    def expands_tokens(self) -> bool:
        """Whether the pipeline's own prompt conversion expands a multi-vector token (``<t>`` -> ``<t> <t>_1``)."""
        return False

    def encode_with_grad(self, prompts: Sequence[str]) -> Conditioning:
        """``encode`` with autograd through the text encoder (padded to the max length)."""
        self.require_one_encoder("textual inversion")
        raise AssertionError  # pragma: no cover
