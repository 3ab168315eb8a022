"""Export to the kohya / AUTOMATIC1111 / ComfyUI LoRA format.

Keys: ``lora_unet_<module path, dots as underscores>.lora_down.weight`` (= A), ``.lora_up.weight`` (= B) and
``.alpha``; the loaders scale by alpha / rank, and since our alpha is folded into B the exported alpha equals the
rank (scale 1). SD 1.x/2.x kohya files use diffusers block names; SDXL files use the original SGM names
(``input_blocks_4_1_...``), which is what the UIs expect. ``ss_network_*`` header keys tell the UIs what it is.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import safetensors.torch
import torch

from .errors import FmnPatchError
from .patch import Patch, atomic_write

_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.attentions\.0\.(.+)$")


def sgm_name(module: str, layers_per_block: int) -> str:
    """diffusers UNet module name -> the original (SGM) name used by SDXL kohya files.

    down_blocks.i.attentions.j -> input_blocks.(1 + i*(L+1) + j).1; up_blocks.i.attentions.j ->
    output_blocks.(i*(L+1) + j).1 (up blocks have L+1 layers each); mid_block -> middle_block.1.
    """
    if m := _DOWN.match(module):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + i * (layers_per_block + 1) + j}.1.{rest}"
    if m := _UP.match(module):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{i * (layers_per_block + 1) + j}.1.{rest}"
    if m := _MID.match(module):
        return f"middle_block.1.{m[1]}"
    raise FmnPatchError(
        f"cannot map {module} to an SGM block name; kohya export supports UNet2DConditionModel"
    )


def to_kohya(patch: Patch, *, layers_per_block: int = 2) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of the kohya form of ``patch`` (``layers_per_block`` matters for SDXL names only)."""
    sdxl = patch.info.architecture.startswith("stable-diffusion-xl")
    tensors: dict[str, torch.Tensor] = {}
    for module in patch.modules:
        a, b = patch.factors[module]
        name = sgm_name(module, layers_per_block) if sdxl else module
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = a.contiguous()
        tensors[f"{key}.lora_up.weight"] = b.contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(a.shape[0]))  # alpha / rank = 1: alpha is folded into B
    source = patch.header()
    header = {k: v for k, v in source.items() if k.startswith(("modelspec.", "fmn_patch."))}
    header.update(
        {
            "format": "pt",
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(patch.rank),
            "ss_network_alpha": str(patch.rank),
            "ss_network_args": json.dumps({"target": "attn2.to_k,attn2.to_v"}),
            "ss_base_model_version": _ss_version(patch.info.architecture),
            "ss_output_name": source["modelspec.title"],
        }
    )
    return tensors, header


def export_kohya(
    patch: Patch, path: str | os.PathLike[str], *, layers_per_block: int = 2, overwrite: bool = False
) -> Path:
    """Write the kohya form of ``patch`` atomically."""
    tensors, header = to_kohya(patch, layers_per_block=layers_per_block)
    return atomic_write(
        Path(path),
        lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=header),
        overwrite=overwrite,
    )


def _ss_version(architecture: str) -> str:
    if architecture.startswith("stable-diffusion-xl"):
        return "sdxl_base_v1-0"
    if architecture.startswith("stable-diffusion-v2"):
        return "sd_v2"
    return "sd_v1"
