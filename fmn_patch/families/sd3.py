"""The SD3 family: Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``, CLIP-L + CLIP-G + T5).

Targets: ``transformer_blocks.N.attn.add_k_proj`` / ``add_v_proj`` of every joint block, the ``context_pre_only``
last block included (its text output is discarded, its keys and values are read). SD3.5's extra ``attn2`` attends
over image tokens only and is no target. Text: the two CLIPs' penultimate states, concatenated and zero-padded to
the T5 width (77 tokens, causal), then T5's states (``max_sequence_length``, 256 by default): the concept sits in
both parts. The attention sequence is [image, text]; keys are RMS-normalised in SD3.5. No attention mask is
passed, so padding tokens receive attention too.

ModelSpec ids as the UIs' model registries spell them: ``stable-diffusion-v3-medium`` (no QK norm),
``stable-diffusion-v3.5-medium`` (dual attention), ``stable-diffusion-v3.5-large``. diffusers has no kohya
converter for SD3 (a kohya-style SD3 file loads as a silent no-op), so no kohya file is written: the patch file
itself (diffusers keys ``transformer.<module>.lora_A/B.weight``, alpha folded) is what ComfyUI and diffusers load.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Final

import torch
import torch.nn.functional as F

from ..errors import FmnPatchError
from .conditioning import Conditioning, Sink
from .identity import Identity
from .joint import capture_joint_attention, sd3_probs
from .mmdit import MMDiTAdapters, MMDiTFamily, MMDiTImages, MMDiTNoise, MMDiTText, mmdit_adapters
from .registry import register_family
from .tokens import padded_ids
from .tokens_mmdit import LearnedTokens

ARCHITECTURES: Final = (
    "stable-diffusion-v3-medium",
    "stable-diffusion-v3.5-medium",
    "stable-diffusion-v3.5-large",
)


class SD3Identity(Identity):
    """SD3/3.5 ModelSpec ids; no kohya form."""

    kohya_form = (
        False  # ComfyUI reads the native file's transformer.* keys; diffusers has no SD3 kohya converter
    )

    def architecture(self) -> str:
        config = self.family.adapters.denoiser.config
        if not config.qk_norm:
            return ARCHITECTURES[0]
        return ARCHITECTURES[1] if config.dual_attention_layers else ARCHITECTURES[2]

    @classmethod
    def serves_architecture(cls, architecture: str) -> bool:
        return architecture.startswith("stable-diffusion-v3") or architecture == "fmn-toy-sd3"

    @classmethod
    def kohya_names(cls, modules: Sequence[str], architecture: str, **layout: int) -> dict[str, str]:
        raise FmnPatchError(
            "no kohya form is written for SD3: diffusers has no SD3 kohya converter (such a file loads as a silent "
            "no-op); the patch file itself loads in diffusers and ComfyUI (transformer.* lora_A/lora_B keys)"
        )

    @classmethod
    def kohya_version(cls, architecture: str) -> str:
        return "sd3"


class SD3Text(LearnedTokens, MMDiTText):
    """Two CLIPs (penultimate states, zero-padded to the T5 width) then T5; pooled CLIP embeddings."""

    sequence_cap = 256  # StableDiffusion3Pipeline's default max_sequence_length
    token_encoders = (
        ("text_encoder", "tokenizer"),
        ("text_encoder_2", "tokenizer_2"),
        ("text_encoder_3", "tokenizer_3"),
    )

    @property
    def t5_tokenizer(self) -> Any:
        return getattr(self.pipe, "tokenizer_3", None) if self.pipe.text_encoder_3 is not None else None

    @property
    def clip_length(self) -> int:
        return int(self.pipe.tokenizer.model_max_length)

    @property
    def max_length(self) -> int:
        return self.clip_length + self.t5_length

    def parts(self) -> list[tuple[int, Any, int]]:
        parts = [(0, self.pipe.tokenizer, self.clip_length)]
        if self.t5_tokenizer is not None:  # without T5 its part is zeros: nothing to place there
            parts.append((self.clip_length, self.t5_tokenizer, self.t5_length))
        return parts

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], batch_size: int = 64) -> Conditioning:
        """The pipeline's ``encode_prompt``: joint states (N, 77 + T5 length, T5 width) and pooled (N, P)."""
        out: Conditioning | None = None
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i : i + batch_size])
            states, _, pooled, _ = self.pipe.encode_prompt(
                prompt=chunk,
                prompt_2=None,
                prompt_3=None,
                device=self.family.adapters.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
                max_sequence_length=self.t5_length,
            )
            part = Conditioning(states, {"pooled": pooled})
            out = part if out is None else out.cat(part)
        assert out is not None
        return out

    def encode_with_grad(self, prompts: Sequence[str]) -> Conditioning:
        """``encode`` with autograd through the three encoders (what ``encode_prompt`` computes)."""
        pipe, device = self.pipe, self.family.adapters.device
        clip_ids = self._ids(pipe.tokenizer, prompts, self.clip_length)
        one = pipe.text_encoder(clip_ids.to(device), output_hidden_states=True)
        two = pipe.text_encoder_2(
            self._ids(pipe.tokenizer_2, prompts, self.clip_length).to(device), output_hidden_states=True
        )
        clip = torch.cat([one.hidden_states[-2], two.hidden_states[-2]], dim=-1)
        width = self.family.adapters.denoiser.config.joint_attention_dim
        clip = F.pad(clip, (0, width - clip.shape[-1]))
        if pipe.text_encoder_3 is not None:
            t5 = pipe.text_encoder_3(self._ids(pipe.tokenizer_3, prompts, self.t5_length).to(device))[0]
        else:
            t5 = clip.new_zeros(len(prompts), self.t5_length, width)
        pooled = torch.cat([one.text_embeds, two.text_embeds], dim=-1)
        return Conditioning(torch.cat([clip, t5.to(clip)], dim=-2), {"pooled": pooled})

    @staticmethod
    def _ids(tokenizer: Any, prompts: Sequence[str], length: int) -> torch.Tensor:
        return padded_ids(tokenizer, prompts, length)


class SD3Noise(MMDiTNoise):
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        assert cond.added is not None, "SD3 conditioning carries pooled embeddings"
        s = self.sigma(t, x_t).to(x_t)
        return self.family.adapters.denoiser(
            hidden_states=x_t,
            timestep=s * self.num_train_timesteps,
            encoder_hidden_states=cond.states,
            pooled_projections=cond.added["pooled"],
        ).sample

    def capture_attention(self, sink: Sink) -> contextlib.AbstractContextManager[list[str]]:
        adapters = mmdit_adapters(self.family)
        return capture_joint_attention(adapters.denoiser, adapters.attention_layers(), sink, sd3_probs)


class SD3Images(MMDiTImages):
    def pixel_size(self) -> int:
        return int(self.family.adapters.denoiser.config.sample_size) * int(self.pipe.vae_scale_factor)

    def latent_shape(self) -> tuple[int, ...]:
        config = self.family.adapters.denoiser.config
        side = int(config.sample_size)
        return (int(config.in_channels), side, side)


class SD3Family(MMDiTFamily):
    """StableDiffusion3Pipeline and its relatives."""

    name = "sd3"
    transformer_class = "SD3Transformer2DModel"
    text_role = SD3Text
    noise_role = SD3Noise
    images_role = SD3Images
    adapters_role = MMDiTAdapters
    identity_role = SD3Identity


register_family(SD3Family)
