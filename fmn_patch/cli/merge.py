"""``fmnpatch merge``: several patches into one (exact, or re-compressed to a rank)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..files import check_output
from ..format.merge import merge_patches
from .options import JsonOut, Overwrite, PatchesArg, Weights, echo_json, info, load_patches


def merge(
    patches: PatchesArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="The merged patch (.safetensors).")],
    weight: Weights = None,
    rank: Annotated[
        int | None, typer.Option(help="Re-compress to this rank by SVD (default: exact concatenation).")
    ] = None,
    title: Annotated[str, typer.Option(help="Title for the merged patch's header.")] = "",
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Merge patches into one file whose effect equals stacking them with the same weights.

    Without --rank the factors are concatenated (exact; rank = sum of ranks). With --rank the summed delta is
    re-compressed by truncated SVD and the residual is reported.

    Examples:

      fmnpatch merge circle.safetensors bob.safetensors -o circle+bob.safetensors

      fmnpatch merge a.safetensors b.safetensors c.safetensors --rank 8 -o abc-r8.safetensors --json
    """
    check_output(output, overwrite=overwrite, suffixes=(".safetensors",), what="--output")
    merged, report = merge_patches(load_patches(patches), weight, rank=rank, title=title)
    path = merged.save(output, overwrite=overwrite)
    info(f"merged {len(patches)} patches: rank {merged.rank}, residual {report.total:.3g}")
    if json_out:
        echo_json(
            {
                "output": str(path),
                "rank": merged.rank,
                "residual": report.total,
                "residuals": report.residuals,
            }
        )
    else:
        typer.echo(str(path))
