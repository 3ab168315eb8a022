"""``fmnpatch apply``: patch a base model, then save it fused or render a before/after grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import values
from ..evaluation.grid import check_image_output, save_image
from ..evaluation.preview import SampleConfig, preview
from ..families.base import load_base
from ..families.stack import default_output, fuse_patches, save_new_pipeline, save_pipeline
from ..files import check_output
from ..format.merge import check_weights
from .options import (
    BaseArg,
    Device,
    Dtype,
    JsonOut,
    Overwrite,
    PatchesArg,
    Strict,
    Weights,
    echo_json,
    info,
    keep_apart,
)
from .options import load_patches as load_patch_files


def apply(
    base: BaseArg,
    patches: PatchesArg,
    weight: Weights = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Fuse the patches and save a full diffusers pipeline here."),
    ] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option("--prompt", "-p", help="Render base vs patched for this prompt (repeatable)."),
    ] = None,
    seed: Annotated[
        list[int] | None, typer.Option("--seed", help="Seed(s) for the render (repeatable).")
    ] = None,
    grid: Annotated[Path, typer.Option(help="Where the render grid PNG goes.")] = Path(
        "fmnpatch-preview.png"
    ),
    steps: Annotated[int, typer.Option(help="Sampler steps for the render.")] = 20,
    guidance: Annotated[float, typer.Option(help="Guidance scale for the render.")] = 5.0,
    strict: Strict = False,
    overwrite: Overwrite = False,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    json_out: JsonOut = False,
) -> None:
    """Apply patches to a base model (stacked, with per-patch weights).

    The stack is fused into the weights and saved as a full diffusers pipeline (loads anywhere, no LoRA needed):
    to --output, or, with no --output and no --prompt, to a new folder named after the base and the patches
    (never replacing one). With --prompt, the prompt is rendered by the base and the patched model side by side
    into one PNG grid.

    Examples:

      fmnpatch apply toy forget-circle.safetensors   # -> ./toy-with-forget-circle

      fmnpatch apply toy forget-circle.safetensors --prompt "a red circle" --seed 0

      fmnpatch apply toy a.safetensors b.safetensors -w 1.0 -w 0.5 --output ./toy-forgot --overwrite

      fmnpatch apply runwayml/stable-diffusion-v1-5 forget-elon.safetensors --output ./sd15-patched --strict
    """
    # every argument is checked before anything is loaded or computed
    fresh = output is None and not prompt  # neither: save the fused model to a new folder named after both
    keep_apart(base, output, default_output(base, [str(p) for p in patches]) if fresh else None)
    keep_apart(base, grid if prompt else None, what="--grid")
    if fresh:
        check_output(
            default_output(base, [str(p) for p in patches]), overwrite=True, folder=True, what="output"
        )
    config = SampleConfig(steps, guidance)
    seeds = [values.seed(s) for s in seed or [0]]
    if output is not None:
        check_output(output, overwrite=overwrite, folder=True, what="--output")
    if prompt:
        check_image_output(grid, overwrite=overwrite)
    loaded = load_patch_files(patches, require_hash=strict)
    weights = check_weights(loaded, weight)
    pipe = load_base(base, device=device, dtype=dtype)
    result: dict[str, object] = {"base": base, "patches": [str(p) for p in patches]}
    if prompt:
        info(f"rendering {len(prompt)} prompt(s) with base and patched model ...")
        image = preview(pipe, loaded, prompt, weights=weights, seeds=seeds, config=config, strict=strict)
        result["grid"] = str(save_image(image, grid, overwrite=overwrite))
    if output is not None or fresh:
        info("fusing patches into the model's weights ...")
        fuse_patches(pipe, loaded, weights, strict=strict)
        if output is not None:
            saved = save_pipeline(pipe, output, overwrite=overwrite)
        else:
            saved = save_new_pipeline(pipe, default_output(base, [str(p) for p in patches]))
        result["output"] = str(saved)
        info(f"load it with DiffusionPipeline.from_pretrained({str(saved)!r})")
    if json_out:
        echo_json(result)
    else:
        for key in ("grid", "output"):
            if key in result:
                typer.echo(result[key])
