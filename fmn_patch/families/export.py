"""Export to the kohya / AUTOMATIC1111 / ComfyUI LoRA format: the family of the patch's architecture names the
modules, ``fmn_patch.format.kohya`` lays the tensors out."""

from __future__ import annotations

import os
from pathlib import Path

import safetensors.torch
import torch

from .. import values
from ..files import atomic_write, check_output
from ..format.patch import Patch
from .registry import family_for_architecture


def to_kohya(
    patch: Patch, *, layers_per_block: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of the kohya form of ``patch``. ``layers_per_block`` names SDXL blocks; None reads it
    from the patch's module names. Two modules that would get one kohya name are refused."""
    if layers_per_block is not None:
        values.whole(layers_per_block, "layers_per_block", 1, 64, example=2)
    family = family_for_architecture(patch.info.architecture)
    layout = {} if layers_per_block is None else {"layers_per_block": layers_per_block}
    return family.to_kohya(patch, **layout)


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
