"""Tiny random Stable Diffusion pipelines built from configs (no download): SD-1.x-, SD-2.x- and SDXL-like.

For tests, demos and structure checks where no real weights can be had; every code path that serves a real
checkpoint serves these.

The layouts mirror the real ones where it matters to patches: SD 1.x uses conv projections in the transformer
blocks, SD 2.x linear projections and per-block head dims, SDXL two text encoders, ``text_time`` conditioning and
several transformer blocks per attention. Widths are tiny so the whole suite runs on CPU in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..errors import FmnPatchError

WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "circle",
    "square",
    "bob",
    "alice",
    "red",
    "blue",
    "striped",
    "in",
    "style",
    "van",
    "gogh",
    "man",
    "cat",
    "dog",
    "elon",
    "musk",
]

__all__ = ["WORDS", "build_sd", "write_tokenizer"]


def write_tokenizer(folder: Path, extra_symbols: str = "") -> CLIPTokenizer:
    """A CLIPTokenizer over a small vocab: byte symbols plus one merge chain per test word. ``extra_symbols``
    (e.g. digits and ``-``) join the symbols, so that prompts using them do not read as unknown tokens, which
    this vocab maps to the end-of-text token."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(".,!?'")
    symbols += [c for c in dict.fromkeys(extra_symbols) if c not in symbols and not c.isspace()]
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
    for s in symbols:
        vocab.setdefault(s + "</w>", len(vocab))
    merges: list[str] = []
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            line = f"{parts[0]} {parts[1]}"
            if line not in merges:
                merges.append(line)
                vocab.setdefault(merged, len(vocab))
            parts = [merged, *parts[2:]]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _text_config(vocab_size: int, hidden: int, projection: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def build_sd(kind: str, folder: Path, seed: int = 0, extra_symbols: str = "") -> Path:
    """Build and save a tiny pipeline of ``kind`` in ``sd1``, ``sd2``, ``sdxl``; returns the folder.
    ``extra_symbols`` widen the tokenizer (``write_tokenizer``), e.g. for the real bench's prompts.

    The weights come from the global RNG seeded with ``seed`` inside ``torch.random.fork_rng``: the caller's RNG
    state is left as it was."""
    if kind not in ("sd1", "sd2", "sdxl"):
        raise FmnPatchError(f"unknown tiny pipeline kind {kind!r}; use sd1, sd2 or sdxl")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(kind, folder, extra_symbols)


def _build(kind: str, folder: Path, extra_symbols: str = "") -> Path:
    tokenizer = write_tokenizer(folder / "_tok", extra_symbols)
    vocab = len(tokenizer)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if kind == "sd2" else "epsilon",
    )
    pipe: Any
    if kind == "sdxl":
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,
            cross_attention_dim=64,
            norm_num_groups=8,
        )
        te1 = CLIPTextModel(_text_config(vocab, 32))
        te2 = CLIPTextModelWithProjection(_text_config(vocab, 32, projection=32))
        pipe = StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=te1,
            text_encoder_2=te2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
        )
    else:
        linear = kind == "sd2"
        hidden = 48 if linear else 32
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=hidden,
            attention_head_dim=(2, 4) if linear else 8,
            use_linear_projection=linear,
            norm_num_groups=8,
        )
        pipe = StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=CLIPTextModel(_text_config(vocab, hidden)),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(folder / kind)
    return folder / kind
