"""Where a concept sits in a tokenized prompt.

A concept's tokens are found by sub-sequence match in the prompt's token ids (multi-token concepts such as
"Elon Musk" and repeated mentions are handled). Through the text encoder's causal attention, a concept also lives in
every position after it: the rest of the prompt, the EOS token and, in SD 1.x, the padding (SD 1.x pads with
``<|endoftext|>`` itself, so "all EOS positions" there means ~70 padding slots; SD 2.x pads with "!").
``Placement`` keeps these sets apart so each method chooses deliberately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import FmnPatchError


class ConceptNotFoundError(FmnPatchError):
    """The tokenizer cannot place the concept in the prompt."""


@dataclass(frozen=True)
class Placement:
    """A tokenized prompt (padded to ``max_length``) and the positions that matter for one concept."""

    prompt: str
    ids: tuple[int, ...]  # all token ids, BOS first, padded
    concept: tuple[int, ...]  # positions of the concept's tokens (every occurrence)
    eos: int  # position of the first EOS token
    length: int  # true length: BOS .. EOS inclusive (eos + 1)

    @property
    def after(self) -> tuple[int, ...]:
        """Positions after the concept's first token up to and including EOS, excluding the concept itself."""
        start = min(self.concept)
        return tuple(p for p in range(start + 1, self.eos + 1) if p not in self.concept)

    @property
    def padding(self) -> tuple[int, ...]:
        return tuple(range(self.eos + 1, len(self.ids)))

    def positions(self, *, after: bool = False, padding: bool = False) -> tuple[int, ...]:
        """The concept's own positions, optionally with those after it (to EOS) and the padding."""
        out = set(self.concept)
        if after:
            out.update(self.after)
        if padding:
            out.update(self.padding)
        return tuple(sorted(out))


def padded_ids(tokenizer: Any, prompts: Sequence[str], length: int | None = None) -> Any:
    """Token ids (N, length) of ``prompts``, cut and padded to ``length`` (the tokenizer's maximum) as pipelines
    pad them, as a tensor."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def find_subsequence(seq: tuple[int, ...], sub: tuple[int, ...]) -> list[int]:
    """Start indices of every occurrence of ``sub`` in ``seq``."""
    n = len(sub)
    return [i for i in range(len(seq) - n + 1) if seq[i : i + n] == sub]


def concept_ids(tokenizer: Any, concept: str) -> tuple[int, ...]:
    ids = tuple(tokenizer(concept, add_special_tokens=False).input_ids)
    if not ids:
        raise ConceptNotFoundError(
            f"concept {concept!r} tokenizes to nothing; give the words the model knows"
        )
    return ids


def place(tokenizer: Any, prompt: str, concept: str, *, max_length: int | None = None) -> Placement:
    """Tokenize ``prompt`` and find ``concept`` in it; raises with both tokenizations when it is not there."""
    max_length = max_length or tokenizer.model_max_length
    ids = tuple(tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True).input_ids)
    sub = concept_ids(tokenizer, concept)
    starts = find_subsequence(ids, sub)
    eos_id = tokenizer.eos_token_id
    eos = ids.index(eos_id, 1) if eos_id in ids[1:] else len(ids) - 1
    starts = [s for s in starts if s + len(sub) <= eos]  # a match inside the padding is no match
    if not starts:
        raise ConceptNotFoundError(
            f"concept {concept!r} (tokens {_show(tokenizer, sub)}) is not in prompt {prompt!r} (tokens "
            f"{_show(tokenizer, ids[: eos + 1])}); use the concept's exact words in the prompt, or check truncation "
            f"at {max_length} tokens"
        )
    positions = tuple(sorted({s + k for s in starts for k in range(len(sub))}))
    return Placement(prompt=prompt, ids=ids, concept=positions, eos=eos, length=eos + 1)


def _show(tokenizer: Any, ids: tuple[int, ...]) -> str:
    return "[" + ", ".join(f"{tokenizer.convert_ids_to_tokens(i)}={i}" for i in ids) + "]"


def common_words(tokenizer: Any, count: int) -> list[str]:
    """The ``count`` most frequent whole-word alphabetic tokens (BPE vocab order = merge order = frequency)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    words = [t[: -len("</w>")] for t, _ in vocab if t.endswith("</w>") and t not in special]
    return [w for w in words if len(w) > 1 and w.isalpha()][:count]


def word_tokens(tokenizer: Any) -> dict[int, str]:
    """The tokens that are whole words, {id: word}: each word tokenizes back to that one id."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in sorted(tokenizer.get_vocab().values()) if i not in special]
    words = [tokenizer.decode([i]).strip() for i in ids]
    back = tokenizer([w or " " for w in words], add_special_tokens=False).input_ids
    return {i: w for i, w, b in zip(ids, words, back, strict=True) if w and " " not in w and b == [i]}
