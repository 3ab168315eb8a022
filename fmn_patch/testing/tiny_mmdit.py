"""Tiny random MMDiT pipelines built from configs (no download): SD3.5-like and Flux-like.

Structurally real where it matters to patches: the SD3.5-like transformer has RMS-normalised queries and keys,
dual-attention layers (an extra ``attn2`` over image tokens only) and a ``context_pre_only`` last block; its text
is two CLIP encoders with projection (penultimate states concatenated and zero-padded to the T5 width) followed
by T5, so a concept sits in the CLIP part and again in the T5 part. The Flux-like one has double-stream blocks
(``attn.add_k_proj``/``add_v_proj``), single-stream blocks over the concatenated [text, image] sequence, RoPE on
both (axes summing to the head size), guidance embedding; its sequence is T5 only, CLIP gives the pooled vector.

Tokenizers are written here: CLIP's by ``tiny.write_tokenizer`` (loaded with ``from_pretrained(dir)``: transformers
5 ignores vocab/merges file arguments given by keyword), T5's as a Unigram ``tokenizer.json`` built with
``tokenizers``, with T5's special ids (pad 0, ``</s>`` 1, unk 2).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from ..errors import FmnPatchError
from .tiny import WORDS, _text_config, _vae, write_tokenizer

T5_SPECIALS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")
KINDS = ("sd3", "flux")

__all__ = ["build_mmdit", "t5_encoder", "t5_pieces", "write_t5_tokenizer"]


def t5_pieces(words: Sequence[str]) -> list[tuple[str, float]]:
    """A Unigram vocabulary in T5's form: the specials, every word as one ``▁word`` piece, then single characters
    (alone and word-initial) so that any other text still tokenizes, piece by piece."""
    pieces: dict[str, float] = dict.fromkeys(T5_SPECIALS, 0.0)
    for word in words:
        pieces.setdefault("\u2581" + word, -1.0)
    pieces.setdefault("\u2581", -5.0)
    for c in string.ascii_letters + string.digits + string.punctuation:
        pieces.setdefault(c, -8.0)
        pieces.setdefault("\u2581" + c, -8.0)
    return list(pieces.items())


def write_t5_tokenizer(directory: Path, words: Sequence[str], max_length: int) -> Path:
    """Write a T5 ``tokenizer.json`` (Unigram, built with ``tokenizers``) and its config into ``directory``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.Unigram(t5_pieces(words), unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": max_length,
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "extra_ids": 0,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return directory


def t5_encoder(vocab_size: int, width: int, layers: int = 2, heads: int = 2, ffn: int | None = None) -> Any:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=width // heads,
        d_ff=ffn or 2 * width,
        num_layers=layers,
        num_heads=heads,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def build_mmdit(kind: str, folder: Path, seed: int = 0) -> Path:
    """Build and save a tiny pipeline of ``kind`` (``sd3``: SD3.5-like, ``flux``: Flux.1-dev-like) in
    ``folder/kind``; weights from the global RNG seeded inside ``torch.random.fork_rng`` (the caller's RNG state
    is left as it was)."""
    if kind not in KINDS:
        raise FmnPatchError(f"unknown tiny MMDiT kind {kind!r}; use one of {', '.join(KINDS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        write_tokenizer(folder / "_clip", extra_symbols="-0123456789")  # the real bench's "close-up" too
        clip = CLIPTokenizer.from_pretrained(folder / "_clip", model_max_length=77)
        t5_tok = T5Tokenizer.from_pretrained(write_t5_tokenizer(folder / "_t5", WORDS, 32))
        pipe = _sd3(clip, t5_tok) if kind == "sd3" else _flux(clip, t5_tok)
    pipe.save_pretrained(folder / kind)
    return folder / kind


def _sd3(clip: CLIPTokenizer, t5_tok: Any) -> StableDiffusion3Pipeline:
    vocab = len(clip)
    vae = _vae()
    vae.register_to_config(scaling_factor=1.5305, shift_factor=0.0609)  # SD3's VAE constants
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,  # = the T5 width
        caption_projection_dim=32,  # = the transformer width
        pooled_projection_dim=64,  # both CLIPs' projections
        pos_embed_max_size=16,
        dual_attention_layers=(0, 1),
        qk_norm="rms_norm",
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(_text_config(vocab, 24, projection=32)),
        tokenizer=clip,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(vocab, 32, projection=32)),
        tokenizer_2=clip,
        text_encoder_3=t5_encoder(len(t5_tok), 64),
        tokenizer_3=t5_tok,
    )


def _flux(clip: CLIPTokenizer, t5_tok: Any) -> FluxPipeline:
    vocab = len(clip)
    vae = _vae()
    vae.register_to_config(scaling_factor=0.3611, shift_factor=0.1159)  # Flux's VAE constants
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2x2
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,  # = the T5 width
        pooled_projection_dim=32,  # = the CLIP width (Flux reads CLIP's pooled output)
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # sums to the head size
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=CLIPTextModel(_text_config(vocab, 32)),
        tokenizer=clip,
        text_encoder_2=t5_encoder(len(t5_tok), 48),
        tokenizer_2=t5_tok,
    )
