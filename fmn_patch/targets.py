"""The modules a patch may touch: the key and value projections of every UNet cross-attention layer.

In a diffusers ``UNet2DConditionModel`` every cross-attention is an ``Attention`` module named ``attn2`` inside a
``BasicTransformerBlock``; its ``to_k`` and ``to_v`` read only the text encoder's hidden states. This module is the
one place where that choice is written down (SD 1.x, SD 2.x and SDXL share it; SDXL just has many more blocks).
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

import torch
from torch import nn

from .errors import BaseMismatchError

CROSS_ATTENTION: Final = "attn2"
PROJECTIONS: Final = ("to_k", "to_v")
TARGET_SUFFIXES: Final = tuple(f"{CROSS_ATTENTION}.{p}" for p in PROJECTIONS)
# peft full-matches a string ``target_modules`` as a regex against module names.
TARGET_REGEX: Final = r".*\." + CROSS_ATTENTION + r"\.(" + "|".join(PROJECTIONS) + r")"
_TARGET_NAME = re.compile(r"^(?:.+\.)?" + CROSS_ATTENTION + r"\.(?:" + "|".join(PROJECTIONS) + r")$")


def is_target(name: str) -> bool:
    """True for a module name such as ``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k``."""
    return bool(_TARGET_NAME.match(name))


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


def target_hash(unet: nn.Module) -> str:
    """SHA-256 of the base weights a patch touches: name, shape and float32 bytes of each target, sorted by name.

    Fine-tunes of the same base give a different hash: a mismatch is a warning, not an error.
    """
    digest = hashlib.sha256()
    for name, layer in sorted(find_targets(unet).items()):
        weight = layer.weight.detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(weight.shape)).encode())
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()
