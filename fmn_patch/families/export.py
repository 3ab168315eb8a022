"""Export to the kohya / AUTOMATIC1111 / ComfyUI LoRA format: the family of the patch's architecture names the
modules, ``fmn_patch.format.kohya`` lays the tensors out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import safetensors.torch
import torch

from .. import values
from ..errors import UnknownNameError
from ..files import atomic_write, check_output
from ..format.kohya import kohya_path
from ..format.patch import Patch
from .registry import family_for_architecture

#: Which tools read each file, by the patch's form (the native one does nothing in ComfyUI or AUTOMATIC1111).
NATIVE_TOOLS: Final = "diffusers (pipe.load_lora_weights) and fmnpatch"
NATIVE_ONLY_TOOLS: Final = "diffusers (pipe.load_lora_weights), ComfyUI (models/loras) and fmnpatch"
KOHYA_TOOLS: Final = (
    "ComfyUI (models/loras), AUTOMATIC1111 (models/Lora) and kohya sd-scripts; "
    "diffusers and fmnpatch read it too"
)


def has_kohya_form(patch: Patch) -> bool:
    """Whether the family of ``patch``'s architecture writes a kohya form (SD3's UIs read the native file)."""
    try:
        return family_for_architecture(patch.info.architecture).identity_role.kohya_form
    except UnknownNameError:
        return False


def use_with(patch: Patch, path: str | os.PathLike[str] | None = None) -> str:
    """One line saying which tools read ``patch``'s file and, for a native file that the UIs ignore, how to make
    the one they read (``fmnpatch export PATH -o PATH.kohya.safetensors``)."""
    if patch.form == "kohya":
        return KOHYA_TOOLS
    if not has_kohya_form(patch):
        return NATIVE_ONLY_TOOLS
    where = "FILE" if path is None else str(path)
    there = "FILE.kohya.safetensors" if path is None else str(kohya_path(Path(path)))
    return f"{NATIVE_TOOLS}; for ComfyUI or AUTOMATIC1111 export it with `fmnpatch export {where} -o {there}`"


def to_kohya(
    patch: Patch, *, layers_per_block: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of the kohya form of ``patch``. ``layers_per_block`` names SDXL blocks; None reads it
    from the patch's module names. Two modules that would get one kohya name are refused."""
    if layers_per_block is not None:
        values.whole(layers_per_block, "layers_per_block", 1, 64, example=2)
    family = family_for_architecture(patch.info.architecture)
    layout = {} if layers_per_block is None else {"layers_per_block": layers_per_block}
    return family.identity_role.to_kohya(patch, **layout)


def export_kohya(
    patch: Patch,
    path: str | os.PathLike[str],
    *,
    layers_per_block: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the kohya form of ``patch`` atomically."""
    path = check_output(path, overwrite=overwrite, suffixes=(".safetensors",), what="export path")
    tensors, header = to_kohya(patch, layers_per_block=layers_per_block)
    return atomic_write(
        path,
        lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=header),
        overwrite=overwrite,
    )
