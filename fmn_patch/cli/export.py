"""``fmnpatch export``: a patch in the kohya format for AUTOMATIC1111 and ComfyUI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ..families.export import export_kohya
from ..files import check_output
from .options import Overwrite, PatchArg, load_patches


def export(
    patch: PatchArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .safetensors file.")],
    format: Annotated[Literal["kohya"], typer.Option(help="Target format.")] = "kohya",
    layers_per_block: Annotated[
        int | None,
        typer.Option(help="UNet layers_per_block, used to name SDXL blocks [default: read from the patch]."),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Export a patch for AUTOMATIC1111 / ComfyUI (kohya keys lora_down/lora_up/alpha, ss_network_* header).

    diffusers re-imports the exported file to the same result. FLUX.1 patches become kohya's fused
    lora_unet_double_blocks_N_txt_attn_qkv form (q rows zero). SD 3/3.5 patches are not exported: diffusers has no
    SD3 kohya converter, and the patch file itself (transformer.* lora_A/lora_B keys) loads in diffusers and
    ComfyUI.

    Examples:

      fmnpatch export forget-circle.safetensors -o forget-circle-kohya.safetensors
    """
    check_output(output, overwrite=overwrite, suffixes=(".safetensors",), what="--output")
    (loaded,) = load_patches([patch])
    typer.echo(str(export_kohya(loaded, output, layers_per_block=layers_per_block, overwrite=overwrite)))
