"""The UNet family's text role: one CLIP encoder (SD 1.x/2.x, its last hidden state) or two (SDXL: penultimate
states concatenated, plus pooled embeddings and size ids), through the pipeline's own ``encode_prompt``; textual
inversion on the one-encoder pipelines."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import FmnPatchError
from .conditioning import Conditioning
from .encoding import TextStates
from .text import Text
from .tokens import padded_ids


class UNetText(Text):
    """CLIP text for SD 1.x/2.x/SDXL pipelines."""

    @property
    def sdxl(self) -> bool:
        return getattr(self.pipe, "text_encoder_2", None) is not None

    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], batch_size: int = 64) -> Conditioning:
        """Encoder states (and, for SDXL, pooled embeddings and size ids) through the pipeline's ``encode_prompt``."""
        pipe, device = self.pipe, self.family.adapters.device
        parts: list[Conditioning] = []
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i : i + batch_size])
            if self.sdxl:
                embeds, _, pooled, _ = pipe.encode_prompt(
                    prompt=chunk, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
                size = self.family.images.pixel_size()
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

    def text_encoders(self) -> list[nn.Module]:
        second = getattr(self.pipe, "text_encoder_2", None)
        return [self.pipe.text_encoder] + ([second] if second is not None else [])

    def text_states(self) -> TextStates:
        if self.sdxl:
            return TextStates(
                self.pipe.tokenizer,
                [
                    (self.pipe.text_encoder, self.pipe.tokenizer, -2),
                    (self.pipe.text_encoder_2, self.pipe.tokenizer_2, -2),
                ],
            )
        return TextStates(self.pipe.tokenizer, [(self.pipe.text_encoder, self.pipe.tokenizer, None)])

    def require_one_encoder(self, what: str) -> None:
        if self.sdxl:
            raise FmnPatchError(
                f"{what} serves SD 1.x/2.x pipelines (one text encoder); for SDXL use --attack paraphrase"
            )

    def token_table(self) -> torch.Tensor:
        self.require_one_encoder("textual inversion")
        return self.pipe.text_encoder.get_input_embeddings().weight

    @contextlib.contextmanager
    def added_tokens(
        self, names: Sequence[str], init: torch.Tensor | None = None, *, sparse: bool = False
    ) -> Iterator[torch.Tensor]:
        """Tokens are added to a copy of the tokenizer and a grown copy of the table; both are put back on exit."""
        self.require_one_encoder("textual inversion")
        pipe = self.pipe
        tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
        original = encoder.get_input_embeddings()  # (V, d)
        extended = copy.deepcopy(tokenizer)
        if extended.add_tokens(list(names)) != len(names):
            raise FmnPatchError(f"tokens {list(names)} already exist in the tokenizer; choose another name")
        rows, dim = original.weight.shape
        with torch.no_grad():  # the grown table, built without drawing from the global RNG
            weight = original.weight.new_empty(len(extended), dim)
            weight[:rows] = original.weight
            weight[rows:] = init.to(weight) if init is not None else original.weight.mean(0)
        table = torch.nn.Embedding(len(extended), dim, _weight=weight, sparse=sparse)
        encoder.set_input_embeddings(table)
        pipe.tokenizer = extended
        try:
            yield table.weight
        finally:
            pipe.tokenizer = tokenizer
            encoder.set_input_embeddings(original)

    @property
    def expands_tokens(self) -> bool:
        from diffusers.loaders import TextualInversionLoaderMixin

        return isinstance(self.pipe, TextualInversionLoaderMixin)

    def encode_with_grad(self, prompts: Sequence[str]) -> Conditioning:
        self.require_one_encoder("textual inversion")
        ids = padded_ids(self.pipe.tokenizer, prompts).to(self.pipe.text_encoder.device)
        return Conditioning(self.pipe.text_encoder(ids)[0])
