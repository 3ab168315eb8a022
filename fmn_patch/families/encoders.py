"""The text-encoder layers a patch may carry beside its key/value factors: self-attention and MLP of a CLIP text
encoder (``text_encoder``, ``text_encoder_2``), as stock diffusers loads them (``text_encoder.<module>.lora_A``).

A text-encoder factor changes the prompt's states before every block reads them, pooled vector included (what
SDXL, SD 3.5 and Flux modulate with); a key/value patch cannot reach that path. Default patches carry none.

Module names are written in the form every released LoRA uses, ``text_model.encoder.layers.N.self_attn.k_proj``:
transformers 5 flattens ``CLIPTextModel`` (``encoder.layers.N...``), and diffusers drops the ``text_model.`` prefix
on load where the model has none, so one file loads under both."""

from __future__ import annotations

import re
from typing import Final

from torch import nn

from ..errors import BaseMismatchError
from ..format.kohya import register_kohya_encoder_stems
from ..format.targets import TargetKind, register_targets

#: The CLIP text encoders' pipeline attributes, in the order pipelines number them.
COMPONENTS: Final = ("text_encoder", "text_encoder_2")
PROJECTIONS: Final = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
PREFIX: Final = "text_model."  # the written form's prefix (absent from transformers 5's flattened CLIP)
REGEX: Final = (
    r"text_model\.encoder\.layers\.(\d+)\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
)

KINDS: Final = {
    component: register_targets(
        TargetKind(
            component=component,
            regex=REGEX,
            projections=PROJECTIONS,
            description=f"{component} CLIP self-attention q/k/v/out and MLP fc1/fc2",
            encoder=True,
            config_prefix=PREFIX,
        )
    )
    for component in COMPONENTS
}


def find_encoder_targets(encoder: nn.Module, component: str) -> dict[str, nn.Linear]:
    """Every patchable linear layer of one CLIP text encoder, by its written name (``text_model.encoder...``), in
    model order; layers wrapped by peft (a loaded LoRA) are unwrapped to their base ``nn.Linear``."""
    kind = KINDS[component]
    found: dict[str, nn.Linear] = {}
    for name, module in encoder.named_modules():
        written = name if name.startswith(PREFIX) else PREFIX + name
        if not kind.matches(written):
            continue
        found[written] = base_linear(
            module, f"{component}.{name}", "text-encoder factors need a transformers CLIP"
        )
    return found


def base_linear(module: nn.Module, name: str, need: str) -> nn.Linear:
    """The ``nn.Linear`` a patch target is: the module itself, or the base layer of a peft wrapper (a loaded LoRA);
    anything else is refused, saying what ``need``s a Linear there."""
    unwrap = getattr(module, "get_base_layer", None)
    base = unwrap() if callable(unwrap) else module
    if not isinstance(base, nn.Linear):
        raise BaseMismatchError(f"{name} is a {type(base).__name__}, not a Linear layer; {need}")
    return base


#: kohya's text-encoder prefixes as the readers map them: ``lora_te``/``lora_te1`` the first CLIP, ``lora_te2`` the
#: second (SDXL's and SD3's CLIP-G; no family here writes T5's ``lora_te3``)
KOHYA_PREFIXES: Final = {"lora_te": "text_encoder", "lora_te1": "text_encoder", "lora_te2": "text_encoder_2"}
_KOHYA_STEM = re.compile(
    r"^(?P<prefix>lora_te[12]?)_text_model_encoder_layers_(?P<layer>\d+)_"
    r"(?P<part>self_attn_(?:q|k|v|out)_proj|mlp_fc[12])$"
)


@register_kohya_encoder_stems
def read_kohya_stem(stem: str) -> tuple[str, str] | None:
    """``lora_te1_text_model_encoder_layers_11_self_attn_k_proj`` -> (``text_encoder``,
    ``text_model.encoder.layers.11.self_attn.k_proj``); None for any other stem."""
    m = _KOHYA_STEM.match(stem)
    if m is None:
        return None
    part = m["part"].replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
    return KOHYA_PREFIXES[m["prefix"]], f"{PREFIX}encoder.layers.{m['layer']}.{part}"


def layer_of(module: str) -> int:
    """The encoder layer a written module name sits in (``text_model.encoder.layers.11.mlp.fc1`` -> 11)."""
    return int(module.removeprefix(PREFIX).split(".")[2])
