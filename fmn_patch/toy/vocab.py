"""The toy model's vocabulary: a CLIP byte-level BPE vocab in which every world word is a single token.

The vocab starts like CLIP's (256 byte symbols, the same 256 with the end-of-word marker `</w>`), then adds
the merges that a tiny BPE learner finds on the word list until each word is one symbol, then the two
special tokens. Any other text still tokenizes, as byte pieces. The toy MMDiT's T5 tokenizer knows the same
words, as T5-style Unigram pieces.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import CLIPTokenizer

from fmn_patch.toy.world import caption_words

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 20  # tokens, BOS and EOS included

#: Common words so that users can type other prompts (and the prompt templates of the real benchmarks).
EXTRA_WORDS: tuple[str, ...] = (
    "an",
    "the",
    "and",
    "or",
    "with",
    "on",
    "at",
    "to",
    "by",
    "for",
    "no",
    "not",
    "without",
    "is",
    "are",
    "photo",
    "image",
    "drawing",
    "painting",
    "sketch",
    "art",
    "artwork",
    "style",
    "portrait",
    "close",
    "up",
    "one",
    "two",
    "three",
    "small",
    "big",
    "large",
    "tiny",
    "dark",
    "light",
    "bright",
    "white",
    "black",
    "orange",
    "purple",
    "pink",
    "brown",
    "grey",
    "gray",
    "colour",
    "color",
    "pattern",
    "texture",
    "stripes",
    "dots",
    "spots",
    "lines",
    "object",
    "thing",
    "figure",
    "man",
    "woman",
    "boy",
    "girl",
    "face",
    "hat",
    "smile",
    "dress",
    "head",
    "dog",
    "cat",
    "bird",
    "fish",
    "car",
    "house",
    "tree",
    "flower",
    "sun",
    "moon",
    "sky",
    "sea",
    "water",
    "city",
    "street",
    "room",
    "table",
    "chair",
    "ball",
    "box",
    "ring",
    "heart",
    "mister",
    "miss",
    "lady",
    "sir",
    "king",
    "queen",
    "famous",
    "someone",
    "de",
    "van",
)


def vocab_words(words: Iterable[str] | None = None) -> list[str]:
    """World words first (sorted; the toy world's caption words unless given), then the extra words; no duplicates."""
    world = sorted(w for w in (caption_words() if words is None else words) if w.isalpha())
    extra = [w for w in dict.fromkeys(EXTRA_WORDS) if w not in world]
    return world + extra


def byte_symbols() -> list[str]:
    """CLIP's printable stand-ins for the 256 bytes, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE on `words` (each counted once) until every word is a single symbol."""
    pieces = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for seq in pieces.values():
            pairs.update(itertools.pairwise(seq))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties broken alphabetically
        merges.append(best)
        for w, seq in pieces.items():
            out: list[str] = []
            i = 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            pieces[w] = out


def write_vocab(directory: Path, words: Iterable[str] | None = None) -> tuple[Path, Path]:
    """Write `vocab.json` and `merges.txt` for a world's caption `words` into `directory`; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    merges = learn_merges(vocab_words(words))
    tokens += ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    merges_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def build_tokenizer(directory: Path, words: Iterable[str] | None = None) -> CLIPTokenizer:
    """Write the vocab (of the toy world, or of `words`) into `directory` and load a CLIPTokenizer from it."""
    vocab_file, merges_file = write_vocab(directory, words)
    return CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=MAX_LENGTH)


T5_MAX_LENGTH = 16  # tokens, `</s>` included: the toy captions are at most 8 words


def build_t5_tokenizer(directory: Path, words: Iterable[str] | None = None) -> Any:
    """Write the toy MMDiT's T5 vocabulary (every world word, of the toy world or of `words`, and extra word one
    ``▁word`` piece, then characters) into ``directory`` and load a ``T5Tokenizer`` from it."""
    from transformers import T5Tokenizer

    from fmn_patch.testing.tiny_mmdit import write_t5_tokenizer

    return T5Tokenizer.from_pretrained(write_t5_tokenizer(directory, vocab_words(words), T5_MAX_LENGTH))
