"""The Flux family: FLUX.1 [dev] / [schnell] (``FluxTransformer2DModel``, CLIP-L pooled + T5).

Targets: the double-stream blocks' text projections ``transformer_blocks.N.attn.add_k_proj`` / ``add_v_proj``.
The single-stream blocks project the concatenated [text, image] sequence with one ``attn.to_k`` / ``to_v``: a LoRA
there moves image keys and values too (only a custom processor could confine it to the text rows, and stock
``load_lora_weights`` would not reproduce that), so they are no targets; the text rows they read are the double
stream's output, which the patch already changes. ``bench/mmdit_sizes.py`` measures how much image-key change a
single-stream patch would bring.

Text: T5's states alone form the sequence (``max_sequence_length``, 512 by default); CLIP gives only the pooled
vector. The sequence is [text, image]; RoPE is applied to both (text ids are zeros) after RMS-normalising queries
and keys. Latents are packed 2x2 for the transformer; this family's latents are the unpacked (C, h, w) ones.
FLUX.1 [dev] is guidance-distilled: ``guidance`` sets its guidance embedding (no second, unconditional pass).

Kohya form, as diffusers and ComfyUI read it: ``lora_unet_double_blocks_{i}_txt_attn_qkv``, one LoRA over the fused
text q/k/v (rows q, k, v) with rank 3r, block-diagonal so each projection keeps its own factors and q gets zeros.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import torch

from ..errors import FmnPatchError
from ..format.kohya import Pairs, register_kohya_reader
from ..format.kohya import layout as kohya_layout
from ..format.patch import Factors, Patch
from .conditioning import Conditioning, Sink
from .identity import Identity
from .joint import capture_joint_attention, flux_probs
from .mmdit import MMDiTAdapters, MMDiTFamily, MMDiTImages, MMDiTNoise, MMDiTText, mmdit_adapters
from .registry import register_family
from .tokens import padded_ids
from .tokens_mmdit import LearnedTokens

ARCHITECTURES: Final = ("Flux.1-dev", "Flux.1-schnell")
#: ModelSpec's implementation id of Black Forest Labs' reference code, whose block names kohya Flux files use
IMPLEMENTATION_BFL: Final = "https://github.com/black-forest-labs/flux"
DEFAULT_GUIDANCE = 3.5  # FLUX.1 [dev]'s usual guidance embedding
_MODULE = re.compile(r"^transformer_blocks\.(\d+)\.attn\.(add_k_proj|add_v_proj)$")
_KOHYA_QKV = re.compile(r"^lora_unet_double_blocks_(\d+)_txt_attn_qkv$")


class FluxIdentity(Identity):
    """FLUX.1 ModelSpec ids; kohya's fused double-block text qkv names."""

    def architecture(self) -> str:
        return ARCHITECTURES[0] if self.family.adapters.denoiser.config.guidance_embeds else ARCHITECTURES[1]

    @classmethod
    def serves_architecture(cls, architecture: str) -> bool:
        return architecture.lower().startswith("flux.1")

    @classmethod
    def kohya_names(cls, modules: Sequence[str], architecture: str, **layout: int) -> dict[str, str]:
        """Both K and V of double block i share kohya's fused stem ``lora_unet_double_blocks_{i}_txt_attn_qkv``."""
        out = {}
        for module in modules:
            m = _MODULE.match(module)
            if m is None:
                raise FmnPatchError(
                    f"no kohya name for {module}: Flux patches touch double-stream text K/V only"
                )
            out[module] = f"lora_unet_double_blocks_{m[1]}_txt_attn_qkv"
        return out

    @classmethod
    def kohya_version(cls, architecture: str) -> str:
        return "flux1"

    @classmethod
    def kohya_encoder_prefixes(cls, architecture: str) -> dict[str, str]:
        """FLUX.1 has one CLIP, ``lora_te1`` (its T5 is ``lora_te3`` in sd-scripts; ComfyUI reads ``lora_te2`` as T5
        too, so no stem of ours may use it)."""
        return {"text_encoder": "lora_te1"}

    @classmethod
    def kohya_header(cls, architecture: str, modules: Sequence[str] = (), **layout: int) -> dict[str, str]:
        """The fused ``double_blocks`` names are Black Forest Labs' own, so that is the key format's implementation;
        FLUX.1 is a flow model (ModelSpec has no prediction type for it)."""
        return {
            "ss_base_model_version": cls.kohya_version(architecture),
            "modelspec.implementation": IMPLEMENTATION_BFL,
        }

    @classmethod
    def to_kohya(cls, patch: Patch, **layout: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """One fused LoRA per double block: down = [0; A_k; A_v] (3r x in), up = blockdiag(0, B_k, B_v)."""
        fused: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        stems = cls.kohya_names(patch.modules, patch.info.architecture)
        for stem in dict.fromkeys(stems.values()):
            block = stem.split("_")[4]
            a_k, b_k = patch.factors[f"transformer_blocks.{block}.attn.add_k_proj"]
            a_v, b_v = patch.factors[f"transformer_blocks.{block}.attn.add_v_proj"]
            r, out = a_k.shape[0], b_k.shape[0]
            down = torch.cat([torch.zeros_like(a_k), a_k, a_v])  # (3r, in)
            up = torch.zeros(3 * out, 3 * r, dtype=b_k.dtype)  # rows q, k, v
            up[out : 2 * out, r : 2 * r] = b_k
            up[2 * out :, 2 * r :] = b_v
            fused[stem] = (down, up)
        header = cls.kohya_header(patch.info.architecture, patch.modules)
        return kohya_layout(fused, patch, header, cls.kohya_encoder_prefixes(patch.info.architecture))


class FluxText(LearnedTokens, MMDiTText):
    """T5 states form the sequence; CLIP gives the pooled vector; the guidance embedding rides along."""

    sequence_cap = 512  # FluxPipeline's default max_sequence_length
    token_encoders = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))

    @property
    def t5_tokenizer(self) -> Any:
        return self.pipe.tokenizer_2

    @property
    def max_length(self) -> int:
        return self.t5_length

    def parts(self) -> list[tuple[int, Any, int]]:
        return [(0, self.pipe.tokenizer_2, self.t5_length)]

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], batch_size: int = 64) -> Conditioning:
        """The pipeline's ``encode_prompt``: T5 states (N, T, D), CLIP pooled (N, P), the guidance embedding."""
        out: Conditioning | None = None
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i : i + batch_size])
            states, pooled, _ids = self.pipe.encode_prompt(
                prompt=chunk,
                prompt_2=None,
                device=self.family.adapters.device,
                max_sequence_length=self.t5_length,
            )
            part = Conditioning(states, {"pooled": pooled, "guidance": self._guidance(len(chunk))})
            out = part if out is None else out.cat(part)
        assert out is not None
        return out

    def _guidance(self, n: int) -> torch.Tensor:
        return torch.full((n,), DEFAULT_GUIDANCE, device=self.family.adapters.device)

    def encode_with_grad(self, prompts: Sequence[str]) -> Conditioning:
        pipe, device = self.pipe, self.family.adapters.device
        clip_ids, t5_ids = (
            padded_ids(pipe.tokenizer, prompts),
            padded_ids(pipe.tokenizer_2, prompts, self.t5_length),
        )
        pooled = pipe.text_encoder(clip_ids.to(device)).pooler_output
        states = pipe.text_encoder_2(t5_ids.to(device))[0]
        return Conditioning(states, {"pooled": pooled, "guidance": self._guidance(len(prompts))})


class FluxNoise(MMDiTNoise):
    """Rectified flow with the resolution-dependent shift; latents packed 2x2 for the transformer."""

    def _mu(self, latents: torch.Tensor) -> float | None:
        config = self.pipe.scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return None
        tokens = (latents.shape[-2] // 2) * (latents.shape[-1] // 2)
        base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
        slope = (max_shift - base_shift) / (max_len - base_len)
        return float(tokens * slope + base_shift - slope * base_len)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        assert cond.added is not None, "Flux conditioning carries pooled embeddings"
        denoiser = self.family.adapters.denoiser
        b, c, h, w = x_t.shape
        packed = x_t.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
        image_ids = torch.zeros(h // 2, w // 2, 3, device=x_t.device)
        image_ids[..., 1] += torch.arange(h // 2, device=x_t.device)[:, None]
        image_ids[..., 2] += torch.arange(w // 2, device=x_t.device)[None, :]
        text_ids = torch.zeros(cond.states.shape[1], 3, device=x_t.device)
        guidance = cond.added["guidance"] if denoiser.config.guidance_embeds else None
        out = denoiser(
            hidden_states=packed,
            timestep=self.sigma(t, x_t).to(x_t),
            guidance=guidance,
            pooled_projections=cond.added["pooled"],
            encoder_hidden_states=cond.states,
            txt_ids=text_ids,
            img_ids=image_ids.reshape(-1, 3).to(x_t.dtype),
        ).sample
        return unpack(out, h, w)

    def capture_attention(self, sink: Sink) -> contextlib.AbstractContextManager[list[str]]:
        adapters = mmdit_adapters(self.family)
        return capture_joint_attention(adapters.denoiser, adapters.attention_layers(), sink, flux_probs)


class FluxImages(MMDiTImages):
    def pixel_size(self) -> int:
        """The VAE's own sample size (1024 for FLUX.1): Flux pipelines keep no default image size of their own."""
        return int(self.pipe.vae.config.sample_size)

    def unpack(self, latents: torch.Tensor, height: int | None, width: int | None) -> torch.Tensor:
        """Flux's sampler returns 2x2-packed latents (B, h/2 * w/2, 4C)."""
        scale, size = int(self.pipe.vae_scale_factor), self.pixel_size()
        height, width = height or size, width or size
        return unpack(latents, 2 * (height // (scale * 2)), 2 * (width // (scale * 2)))

    def latent_shape(self) -> tuple[int, ...]:
        side = self.pixel_size() // int(self.pipe.vae_scale_factor)
        return (int(self.family.adapters.denoiser.config.in_channels) // 4, side, side)


class FluxFamily(MMDiTFamily):
    """FluxPipeline and its relatives."""

    name = "flux"
    transformer_class = "FluxTransformer2DModel"
    text_role = FluxText
    noise_role = FluxNoise
    images_role = FluxImages
    adapters_role = MMDiTAdapters
    identity_role = FluxIdentity


def unpack(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """2x2-packed latents (B, h/2 * w/2, 4C) back to (B, C, h, w)."""
    b, _, d = packed.shape
    return packed.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def read_kohya(pairs: Pairs, header: Mapping[str, str]) -> tuple[str, Factors] | None:
    """Fused text-qkv stems back into ``add_k_proj`` / ``add_v_proj`` factors (``register_kohya_reader``): K's
    factors are up's K rows (out x R) with down (R x in), V's likewise; the columns of up that are zero for a
    projection go with their rows of down, so an export reads back at its own rank, bit for bit. None unless every
    stem is a double block's text qkv whose q rows are zero (a patch touches text K/V only)."""
    factors: Factors = {}
    for stem, (down, up) in pairs.items():
        m = _KOHYA_QKV.match(stem)
        if m is None or up.shape[0] % 3 or bool(up[: up.shape[0] // 3].any()):
            return None
        out = up.shape[0] // 3
        for i, projection in ((1, "add_k_proj"), (2, "add_v_proj")):
            b = up[i * out : (i + 1) * out]  # (out, R)
            keep = b.any(dim=0)
            keep[0] |= not bool(keep.any())  # a zero delta keeps one (zero) column
            factors[f"transformer_blocks.{m[1]}.attn.{projection}"] = (
                down[keep].contiguous(),
                b[:, keep].contiguous(),
            )
    return "transformer", factors


register_family(FluxFamily)
register_kohya_reader(read_kohya)
