"""The UNet family: Stable Diffusion 1.x, 2.x and SDXL (``UNet2DConditionModel`` with CLIP text encoders).

Every cross-attention is an ``Attention`` module named ``attn2`` inside a ``BasicTransformerBlock``; its ``to_k``
and ``to_v`` read only the text encoder's hidden states. Those are the targets (SDXL just has many more blocks).
Text: SD 1.x/2.x one CLIP encoder (last hidden state); SDXL two (penultimate states, concatenated, plus pooled
embeddings and size ids). Prediction: eps or v, as the scheduler says.

The roles: ``UNetAdapters`` (the attn2 targets), ``UNetIdentity`` (ModelSpec ids, kohya names), ``UNetText``
(``unet_text.py``), ``UNetNoise``, ``UNetImages``; the kohya name mapping both ways is at the end of this module.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import torch
from torch import nn

from ..errors import BaseMismatchError, FmnPatchError
from ..format.kohya import by_name, register_kohya_reader
from ..format.targets import TargetKind, register_targets
from .adapters import Adapters
from .capture import capture_cross_attention
from .conditioning import Conditioning, Sink
from .encoders import base_linear
from .family import Family
from .identity import Identity
from .images import Images
from .noise import Noise
from .registry import register_family
from .unet_text import UNetText

CROSS_ATTENTION: Final = "attn2"
PROJECTIONS: Final = ("to_k", "to_v")
TARGET_SUFFIXES: Final = tuple(f"{CROSS_ATTENTION}.{p}" for p in PROJECTIONS)
# peft full-matches a string ``target_modules`` as a regex against module names.
TARGET_REGEX: Final = r".*\." + CROSS_ATTENTION + r"\.(" + "|".join(PROJECTIONS) + r")"
UNET_TARGETS: Final = register_targets(
    TargetKind(
        component="unet",
        regex=TARGET_REGEX,
        projections=PROJECTIONS,
        description="UNet attn2.to_k/to_v",
    )
)
#: ModelSpec's implementation id of Stability's original (SGM) code, whose block names SDXL kohya files use
IMPLEMENTATION_SGM: Final = "https://github.com/Stability-AI/generative-models"
_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.attentions\.0\.(.+)$")


class UNetAdapters(Adapters):
    """LoRA on the UNet's cross-attention keys and values."""

    component = "unet"
    targets_kind = UNET_TARGETS

    def targets(self) -> dict[str, nn.Linear]:
        return find_targets(self.denoiser)


class UNetIdentity(Identity):
    """SD 1.x/2.x/SDXL ModelSpec ids, and kohya names as sd-scripts writes them."""

    def architecture(self) -> str:
        config = self.family.adapters.denoiser.config
        if getattr(config, "addition_embed_type", None) == "text_time":
            return "stable-diffusion-xl-v1-base"
        if config.use_linear_projection:  # SD 2.x: linear in/out projections in the transformer blocks
            v_pred = getattr(self.pipe.scheduler.config, "prediction_type", "epsilon") == "v_prediction"
            return "stable-diffusion-v2-768-v" if v_pred else "stable-diffusion-v2-512"
        return "stable-diffusion-v1"

    @classmethod
    def serves_architecture(cls, architecture: str) -> bool:
        sd3 = architecture.startswith("stable-diffusion-v3")
        return (architecture.startswith("stable-diffusion-") and not sd3) or architecture == "fmn-toy"

    @classmethod
    def kohya_names(cls, modules: Sequence[str], architecture: str, **layout: int) -> dict[str, str]:
        """SD 1.x/2.x kohya files use diffusers block names; SDXL files the original SGM names
        (``input_blocks_4_1_...``), which is what the UIs expect."""
        sdxl = architecture.startswith("stable-diffusion-xl")
        if not sdxl:
            return {m: "lora_unet_" + m.replace(".", "_") for m in modules}
        per_block = layout.get("layers_per_block") or layers_per_block(modules)
        return {m: "lora_unet_" + sgm_name(m, per_block).replace(".", "_") for m in modules}

    @classmethod
    def kohya_encoder_prefixes(cls, architecture: str) -> dict[str, str]:
        """SD 1.x/2.x have one text encoder, ``lora_te``; SDXL two, ``lora_te1`` and ``lora_te2``."""
        if architecture.startswith("stable-diffusion-xl"):
            return super().kohya_encoder_prefixes(architecture)
        return {"text_encoder": "lora_te"}

    @classmethod
    def kohya_version(cls, architecture: str) -> str:
        """sd-scripts' ``ss_base_model_version``: sd_v1, sd_v2, sd_v2_v (v-prediction), sdxl_base_v1-0."""
        if architecture.startswith("stable-diffusion-xl"):
            return "sdxl_base_v1-0"
        if architecture.startswith("stable-diffusion-v2"):
            return "sd_v2_v" if _v_prediction(architecture) else "sd_v2"
        return "sd_v1"

    @classmethod
    def kohya_header(cls, architecture: str, modules: Sequence[str] = (), **layout: int) -> dict[str, str]:
        """What sd-scripts writes and the UIs read: ``ss_v2`` (AUTOMATIC1111 files an SD-2.x LoRA as SD1 and hides it
        without it), ``ss_v_parameterization``, the ModelSpec prediction type, and the implementation whose names
        the keys use: diffusers block names for SD 1.x/2.x, Stability's SGM names for SDXL."""
        v_pred = _v_prediction(architecture)
        sdxl = architecture.startswith("stable-diffusion-xl")
        keys = {
            "ss_base_model_version": cls.kohya_version(architecture),
            "ss_v2": str(architecture.startswith("stable-diffusion-v2")),
            "ss_v_parameterization": str(v_pred),
            "modelspec.prediction_type": "v" if v_pred else "epsilon",
            "modelspec.implementation": IMPLEMENTATION_SGM if sdxl else "diffusers",
        }
        if sdxl:  # SGM block numbers depend on it: recorded so that the names read back
            keys["fmn_patch.layers_per_block"] = str(
                layout.get("layers_per_block") or layers_per_block(modules)
            )
        return keys


class UNetNoise(Noise):
    """eps or v prediction, as the scheduler says; the scheduler's own noising."""

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.pipe.scheduler.add_noise(x0, noise, t)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.pipe.scheduler.config.prediction_type == "v_prediction":
            return self.pipe.scheduler.get_velocity(x0, noise, t)
        return noise

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        kwargs: dict[str, Any] = {"encoder_hidden_states": cond.states}
        if cond.added is not None:
            kwargs["added_cond_kwargs"] = cond.added
        return self.family.adapters.denoiser(x_t, t, **kwargs).sample

    def capture_attention(self, sink: Sink) -> contextlib.AbstractContextManager[list[str]]:
        return capture_cross_attention(self.family.adapters.denoiser, sink, CROSS_ATTENTION)


class UNetImages(Images):
    def pixel_size(self) -> int:
        return int(self.family.adapters.denoiser.config.sample_size) * int(self.pipe.vae_scale_factor)


class UNetFamily(Family):
    """SD 1.x / 2.x / SDXL pipelines."""

    name = "unet"
    text_role = UNetText
    noise_role = UNetNoise
    images_role = UNetImages
    adapters_role = UNetAdapters
    identity_role = UNetIdentity

    @classmethod
    def claims(cls, pipe: Any) -> bool:
        unet = getattr(pipe, "unet", None)
        return unet is not None and any(n.endswith(TARGET_SUFFIXES) for n, _ in unet.named_modules())


register_family(UNetFamily)


def is_target(name: str) -> bool:
    """True for a module name such as ``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k``."""
    return UNET_TARGETS.matches(name)


def find_targets(unet: nn.Module) -> dict[str, nn.Linear]:
    """Every ``attn2.to_k`` / ``attn2.to_v`` linear layer of a UNet, by module name, in model order.

    Layers already wrapped by peft (a loaded LoRA) are unwrapped to their base ``nn.Linear``.
    """
    found: dict[str, nn.Linear] = {}
    for name, module in unet.named_modules():
        if not is_target(name):
            continue
        found[name] = base_linear(
            module, name, "fmn-patch needs a diffusers UNet whose cross-attention projections are nn.Linear"
        )
    if not found:
        raise BaseMismatchError(
            f"no {CROSS_ATTENTION}.to_k/to_v layers found in {type(unet).__name__}; pass the UNet of a "
            "Stable Diffusion pipeline (SD 1.x, 2.x or SDXL)"
        )
    return found


def _v_prediction(architecture: str) -> bool:
    return architecture.startswith("stable-diffusion-v2") and architecture.endswith("-v")


_KOHYA_DIFFUSERS = re.compile(
    r"^lora_unet_(?:(?P<block>down_blocks|up_blocks)_(?P<i>\d+)_attentions_(?P<j>\d+)|(?P<mid>mid_block_attentions_0))"
    r"_transformer_blocks_(?P<t>\d+)_attn2_(?P<p>to_k|to_v)$"
)
_KOHYA_SGM = re.compile(
    r"^lora_unet_(?:(?P<block>input_blocks|output_blocks)_(?P<n>\d+)_1|(?P<mid>middle_block_1))"
    r"_transformer_blocks_(?P<t>\d+)_attn2_(?P<p>to_k|to_v)$"
)


def read_kohya(stems: Sequence[str], header: Mapping[str, str]) -> dict[str, tuple[str, str]] | None:
    """kohya names back to UNet modules (``register_kohya_reader``): diffusers-style names (SD 1.x/2.x) directly,
    SGM names (SDXL) with the header's ``fmn_patch.layers_per_block`` (2, SDXL's, when absent). None unless every
    name is an attn2 to_k/to_v."""
    raw = header.get("fmn_patch.layers_per_block", "2")
    per_block = int(raw) if raw.isascii() and raw.isdigit() and 0 < int(raw) < 64 else 2
    out = {}
    for stem in stems:
        if m := _KOHYA_DIFFUSERS.match(stem):
            where = "mid_block.attentions.0" if m["mid"] else f"{m['block']}.{m['i']}.attentions.{m['j']}"
        elif m := _KOHYA_SGM.match(stem):
            if m["mid"]:
                where = "mid_block.attentions.0"
            elif m["block"] == "input_blocks":
                i, j = divmod(int(m["n"]) - 1, per_block + 1)
                if int(m["n"]) < 1 or j == per_block:  # input_blocks 0 and each block's downsampler hold none
                    return None
                where = f"down_blocks.{i}.attentions.{j}"
            else:
                i, j = divmod(int(m["n"]), per_block + 1)
                where = f"up_blocks.{i}.attentions.{j}"
        else:
            return None
        out[stem] = ("unet", f"{where}.transformer_blocks.{m['t']}.attn2.{m['p']}")
    return out


def layers_per_block(modules: Sequence[str]) -> int:
    """The UNet's ``layers_per_block`` L as the module names show it: down blocks have attentions 0..L-1, up blocks
    0..L (2 for SDXL when neither kind is in the patch)."""
    down = [int(m[2]) + 1 for name in modules if (m := _DOWN.match(name))]
    up = [int(m[2]) for name in modules if (m := _UP.match(name))]
    return max([*down, *up], default=2) or 1


def sgm_name(module: str, layers_per_block: int) -> str:
    """diffusers UNet module name -> the original (SGM) name used by SDXL kohya files.

    down_blocks.i.attentions.j -> input_blocks.(1 + i*(L+1) + j).1; up_blocks.i.attentions.j ->
    output_blocks.(i*(L+1) + j).1 (up blocks have L+1 layers each); mid_block -> middle_block.1. A module whose
    attention index does not fit L (j >= L down, j > L up) is refused: its name would be another block's.
    """
    if isinstance(layers_per_block, bool) or not isinstance(layers_per_block, int) or layers_per_block < 1:
        raise FmnPatchError(f"layers_per_block={layers_per_block!r} must be a whole number >= 1 (SDXL has 2)")
    if m := _DOWN.match(module):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        _fits(module, j, layers_per_block - 1, layers_per_block)
        return f"input_blocks.{1 + i * (layers_per_block + 1) + j}.1.{rest}"
    if m := _UP.match(module):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        _fits(module, j, layers_per_block, layers_per_block)
        return f"output_blocks.{i * (layers_per_block + 1) + j}.1.{rest}"
    if m := _MID.match(module):
        return f"middle_block.1.{m[1]}"
    raise FmnPatchError(
        f"cannot map {module} to an SGM block name; kohya export supports UNet2DConditionModel"
    )


def _fits(module: str, index: int, most: int, layers: int) -> None:
    if index > most:
        raise FmnPatchError(
            f"{module} does not fit layers_per_block={layers} (its attention index is {index}); give the UNet's "
            "own value with --layers-per-block, or leave it out to read it from the patch"
        )


register_kohya_reader(by_name(read_kohya))
