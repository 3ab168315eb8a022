"""Architecture of the toy MMDiT (``toy-sd3``): a Stable Diffusion 3.5-style pipeline built from configs.

Every part is the real diffusers/transformers class at toy size: two CLIP text encoders with projection (their
penultimate states concatenated and zero-padded to the T5 width, their pooled outputs concatenated), a T5
encoder, an ``SD3Transformer2DModel`` with RMS-normalised queries and keys (as SD 3.5) whose last block is
``context_pre_only``, the flow-matching Euler scheduler, and the toy world's own VAE (the same weights as the
UNet toy's, with an SD3-style shift and scale measured on the training latents), so that the toy judge, which
learned from that VAE's reconstructions, judges both models alike.

Sizes: 32x32 images, 16x16x4 latents, patch 2 (64 image tokens), 20 CLIP + 16 T5 text tokens, width 128
(4 heads of 32), 4 joint blocks: about 1 s per training step of 64 images on one core.

How it trains (`fmn_patch.toy.family.SD3` names these for the shared loop): a CLIP tokenizer, read by both CLIP
encoders, and a T5 one (`tokenizers`); the transformer and its three text encoders trained together
(`trainable`), conditioned as StableDiffusion3Pipeline.encode_prompt does (`text_conditioning`, `predict`); saved
as a StableDiffusion3Pipeline (`pipeline`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from fmn_patch.toy.vocab import build_t5_tokenizer, build_tokenizer
from fmn_patch.toy.world import SIZE


@dataclass(frozen=True)
class Sd3ModelConfig:
    """Sizes of the toy MMDiT's parts."""

    clip_hidden: int = 48  # each CLIP encoder; the two concatenated (96) are zero-padded to t5_width
    clip_layers: int = 2
    clip_heads: int = 4
    clip_ffn: int = 192
    clip_projection: int = 32  # pooled output of each CLIP; both concatenated = the pooled projection
    t5_width: int = 128  # = the transformer's joint attention dim
    t5_layers: int = 2
    t5_heads: int = 4
    t5_ffn: int = 256
    width: int = 128  # transformer width = caption projection dim
    heads: int = 4
    layers: int = 4  # joint blocks; the last is context_pre_only
    patch: int = 2
    latent_channels: int = 4
    vae_scale: int = 2  # the toy VAE down-samples once: 32x32 -> 16x16
    qk_norm: str = "rms_norm"  # SD 3.5's; SD 3.0 has none
    shift: float = 1.0  # flow-matching time shift (SD3 uses 3.0 at 1024 px; 64 image tokens need none)
    train_timesteps: int = 1000


def build_clip(cfg: Sd3ModelConfig, tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.clip_hidden,
        intermediate_size=cfg.clip_ffn,
        num_hidden_layers=cfg.clip_layers,
        num_attention_heads=cfg.clip_heads,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=cfg.clip_projection,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # pooling reads the first end-of-text token
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config)


def build_t5(cfg: Sd3ModelConfig, vocab_size: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=cfg.t5_width,
        d_kv=cfg.t5_width // cfg.t5_heads,
        d_ff=cfg.t5_ffn,
        num_layers=cfg.t5_layers,
        num_heads=cfg.t5_heads,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def build_transformer(cfg: Sd3ModelConfig) -> SD3Transformer2DModel:
    latent = SIZE // cfg.vae_scale
    return SD3Transformer2DModel(
        sample_size=latent,
        patch_size=cfg.patch,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        num_layers=cfg.layers,
        attention_head_dim=cfg.width // cfg.heads,
        num_attention_heads=cfg.heads,
        joint_attention_dim=cfg.t5_width,
        caption_projection_dim=cfg.width,  # must equal the width
        pooled_projection_dim=2 * cfg.clip_projection,
        pos_embed_max_size=latent // cfg.patch,
        qk_norm=cfg.qk_norm,
    )


def build_scheduler(cfg: Sd3ModelConfig) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.train_timesteps, shift=cfg.shift)


def assemble(
    cfg: Sd3ModelConfig,
    tokenizer: CLIPTokenizer,
    tokenizer_3: object,
    text_encoder: CLIPTextModelWithProjection,
    text_encoder_2: CLIPTextModelWithProjection,
    text_encoder_3: T5EncoderModel,
    vae: AutoencoderKL,
    transformer: SD3Transformer2DModel,
) -> StableDiffusion3Pipeline:
    """A StableDiffusion3Pipeline; both CLIP encoders read the one toy CLIP vocabulary."""
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=build_scheduler(cfg),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def tokenizers(folder: Path, words: Iterable[str]) -> tuple[CLIPTokenizer, Any]:
    """The CLIP tokenizer (both CLIP encoders read it) and the T5 one, over the world's caption `words`."""
    words = sorted(words)
    return build_tokenizer(folder / "clip", words), build_t5_tokenizer(folder / "t5", words)


Encoders = tuple[CLIPTextModelWithProjection, CLIPTextModelWithProjection, T5EncoderModel]


def trainable(
    cfg: Sd3ModelConfig, tokenizers: tuple[CLIPTokenizer, Any]
) -> tuple[SD3Transformer2DModel, Encoders]:
    """The parts trained together, freshly initialised from the global RNG: both CLIPs, T5, then the transformer."""
    encoders = (
        build_clip(cfg, tokenizers[0]),
        build_clip(cfg, tokenizers[0]),
        build_t5(cfg, len(tokenizers[1])),
    )
    return build_transformer(cfg), encoders


def text_conditioning(
    encoders: Encoders, clip_ids: torch.Tensor, t5_ids: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """What StableDiffusion3Pipeline.encode_prompt computes, with autograd: the two CLIPs' penultimate states
    concatenated and zero-padded to the T5 width, then the T5 states, along the sequence; pooled: both CLIPs'."""
    one, two, t5 = encoders
    a, b = one(clip_ids, output_hidden_states=True), two(clip_ids, output_hidden_states=True)
    clip = torch.cat([a.hidden_states[-2], b.hidden_states[-2]], dim=-1)  # (B, 20, 2 * clip_hidden)
    clip = F.pad(clip, (0, width - clip.shape[-1]))  # (B, 20, t5_width)
    states = torch.cat([clip, t5(t5_ids)[0]], dim=-2)  # (B, 20 + 16, t5_width)
    return states, torch.cat([a.text_embeds, b.text_embeds], dim=-1)


def predict(
    cfg: Sd3ModelConfig,
    transformer: SD3Transformer2DModel,
    encoders: Encoders,
    x_t: torch.Tensor,
    timestep: torch.Tensor,
    ids: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The transformer's prediction for x_t (B, 4, 16, 16) given (CLIP ids, T5 ids); timestep in [0, 1000]."""
    states, pooled = text_conditioning(encoders, ids[0], ids[1], cfg.t5_width)
    return transformer(x_t, encoder_hidden_states=states, pooled_projections=pooled, timestep=timestep).sample


def pipeline(
    cfg: Sd3ModelConfig,
    tokenizers: tuple[CLIPTokenizer, Any],
    encoders: Encoders,
    vae: AutoencoderKL,
    transformer: SD3Transformer2DModel,
) -> StableDiffusion3Pipeline:
    """`assemble` from the shared loop's parts."""
    return assemble(cfg, tokenizers[0], tokenizers[1], *encoders, vae, transformer)
