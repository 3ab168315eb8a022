"""Export to the kohya / AUTOMATIC1111 / ComfyUI LoRA format: the family of the patch's architecture names the
modules, ``fmn_patch.format.kohya`` lays the tensors out."""

from __future__ import annotations

import os
from pathlib import Path

import safetensors.torch
import torch

from ..files import atomic_write
from ..format.patch import Patch
from .registry import family_for_architecture


def to_kohya(patch: Patch, *, layers_per_block: int = 2) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of the kohya form of ``patch`` (``layers_per_block`` matters for SDXL names only)."""
    family = family_for_architecture(patch.info.architecture)
    return family.to_kohya(patch, layers_per_block=layers_per_block)


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
