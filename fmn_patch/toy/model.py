"""Architecture of the toy Stable Diffusion pipeline: a tiny CLIP text encoder, VAE and UNet built from configs.

Sizes follow a feasibility probe on 2 CPU cores: 32x32 RGB images, a VAE with one down-sampling (16x16x4
latents), a UNet with channels (32, 64) and cross-attention only at 8x8 (cross-attention at 16x16 made a step
2.4x slower, mid-block attention in the VAE 3.5x).

How it trains (`fmn_patch.toy.family.UNET` names these for the shared loop): one CLIP tokenizer (`tokenizers`),
the UNet and its text encoder trained together (`trainable`), conditioned on the encoder's last hidden states
(`predict`), saved as a StableDiffusionPipeline (`pipeline`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from fmn_patch.toy.vocab import build_tokenizer
from fmn_patch.toy.world import SIZE


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the toy pipeline's parts."""

    text_hidden: int = 64  # CLIP text encoder width = UNet cross-attention dim
    text_layers: int = 2
    text_heads: int = 4
    text_ffn: int = 256
    vae_channels: tuple[int, ...] = (32, 64)  # one down-sampling: 32x32 -> 16x16
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64)  # 16x16 (no attention) -> 8x8 (cross-attention)
    unet_heads: int = 4
    train_timesteps: int = 1000


def build_text_encoder(cfg: ModelConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_ffn,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=cfg.text_hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae(cfg: ModelConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=min(32, cfg.vae_channels[0]),
        sample_size=SIZE,
        mid_block_add_attention=False,
    )


def build_unet(cfg: ModelConfig) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=SIZE // 2,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=cfg.unet_channels,
        layers_per_block=1,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.unet_heads,  # diffusers' legacy name: the number of heads
        norm_num_groups=min(32, cfg.unet_channels[0]),
    )


def noise_schedule(cfg: ModelConfig) -> dict[str, object]:
    """Stable Diffusion 1.x's schedule, shared by the training and the sampling scheduler."""
    return {
        "num_train_timesteps": cfg.train_timesteps,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
    }


def build_train_scheduler(cfg: ModelConfig) -> DDPMScheduler:
    return DDPMScheduler(**noise_schedule(cfg), clip_sample=False)  # type: ignore[arg-type]


def assemble(
    cfg: ModelConfig,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline with a DDIM sampler and no safety checker."""
    scheduler = DDIMScheduler(
        **noise_schedule(cfg),  # type: ignore[arg-type]
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tokenizers(folder: Path, words: Iterable[str]) -> tuple[CLIPTokenizer]:
    """The one tokenizer, its vocabulary the world's caption `words`, written into `folder`."""
    return (build_tokenizer(folder, words),)


def trainable(
    cfg: ModelConfig, tokenizers: tuple[CLIPTokenizer]
) -> tuple[UNet2DConditionModel, tuple[CLIPTextModel]]:
    """The parts trained together, freshly initialised from the global RNG: the text encoder, then the UNet."""
    text_encoder = build_text_encoder(cfg, tokenizers[0])
    return build_unet(cfg), (text_encoder,)


def predict(
    cfg: ModelConfig,
    unet: UNet2DConditionModel,
    encoders: tuple[CLIPTextModel],
    x_t: torch.Tensor,
    timestep: torch.Tensor,
    ids: tuple[torch.Tensor],
) -> torch.Tensor:
    """The UNet's prediction for x_t (B, 4, 16, 16), cross-attending to the text encoder's last states."""
    context = encoders[0](ids[0])[0]  # (B, T, D)
    return unet(x_t, timestep, context).sample


def pipeline(
    cfg: ModelConfig,
    tokenizers: tuple[CLIPTokenizer],
    encoders: tuple[CLIPTextModel],
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
) -> StableDiffusionPipeline:
    """`assemble` from the shared loop's parts."""
    return assemble(cfg, tokenizers[0], encoders[0], vae, unet)
