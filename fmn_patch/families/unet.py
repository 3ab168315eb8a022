"""The UNet family: Stable Diffusion 1.x, 2.x and SDXL (``UNet2DConditionModel`` with CLIP text encoders).

Every cross-attention is an ``Attention`` module named ``attn2`` inside a ``BasicTransformerBlock``; its ``to_k``
and ``to_v`` read only the text encoder's hidden states. Those are the targets (SDXL just has many more blocks).
Text: SD 1.x/2.x one CLIP encoder (last hidden state); SDXL two (penultimate states, concatenated, plus pooled
embeddings and size ids). Prediction: eps or v, as the scheduler says.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import torch
from torch import nn

from ..errors import BaseMismatchError, FmnPatchError
from ..format.kohya import by_name, register_kohya_reader
from ..format.targets import TargetKind, register_targets
from .capture import capture_cross_attention
from .encoding import TextStates
from .family import Conditioning, Family, Sink
from .registry import register_family

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


class UNetFamily(Family):
    """SD 1.x / 2.x / SDXL pipelines."""

    name = "unet"
    component = "unet"
    targets_kind = UNET_TARGETS

    @classmethod
    def claims(cls, pipe: Any) -> bool:
        unet = getattr(pipe, "unet", None)
        return unet is not None and any(n.endswith(TARGET_SUFFIXES) for n, _ in unet.named_modules())

    # ------------------------------------------------------------------------------------ what a patch touches
    def targets(self) -> dict[str, nn.Linear]:
        return find_targets(self.denoiser)

    def architecture(self) -> str:
        config = self.denoiser.config
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

    # ----------------------------------------------------------------------------------------------- text
    @property
    def sdxl(self) -> bool:
        return getattr(self.pipe, "text_encoder_2", None) is not None

    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], batch_size: int = 64) -> Conditioning:
        """Encoder states (and, for SDXL, pooled embeddings and size ids) through the pipeline's ``encode_prompt``."""
        pipe, device = self.pipe, self.device
        parts: list[Conditioning] = []
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i : i + batch_size])
            if self.sdxl:
                embeds, _, pooled, _ = pipe.encode_prompt(
                    prompt=chunk, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
                size = self.pixel_size()
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
        ids = self.pipe.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.pipe.text_encoder.device)
        return Conditioning(self.pipe.text_encoder(ids)[0])

    # ------------------------------------------------------------------------------------------ denoising
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
        return self.denoiser(x_t, t, **kwargs).sample

    def capture_attention(self, sink: Sink) -> contextlib.AbstractContextManager[list[str]]:
        return capture_cross_attention(self.denoiser, sink, CROSS_ATTENTION)

    # ------------------------------------------------------------------------------------------- images
    def pixel_size(self) -> int:
        return int(self.denoiser.config.sample_size) * int(self.pipe.vae_scale_factor)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * vae.config.scaling_factor).float().cpu()


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
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if not isinstance(base, nn.Linear):
            raise BaseMismatchError(
                f"{name} is a {type(base).__name__}, not a Linear layer; fmn-patch needs a diffusers UNet "
                "whose cross-attention projections are nn.Linear"
            )
        found[name] = base
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
