"""``fmnpatch merge``: several patches into one (exact, or re-compressed to a rank)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import FmnPatchError
from ..files import check_output
from ..format.lowrank import MAX_RESIDUAL
from ..format.merge import merge_patches
from .options import (
    JsonOut,
    MaxResidual,
    Overwrite,
    PatchesArg,
    Weights,
    chosen_rank,
    echo_json,
    info,
    load_patches,
    rank_line,
)


def merge(
    patches: PatchesArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="The merged patch (.safetensors).")],
    weight: Weights = None,
    rank: Annotated[
        str | None,
        typer.Option(
            help="Re-compress to this rank by SVD, or auto: per module the smallest rank within --max-residual "
            "(default: exact concatenation).",
            metavar="R|auto",
            show_default=False,
        ),
    ] = None,
    max_residual: MaxResidual = None,
    title: Annotated[str, typer.Option(help="Title for the merged patch's header.")] = "",
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Merge patches into one file whose effect equals stacking them with the same weights.

    Without --rank the factors are concatenated (exact; rank = sum of ranks). With --rank the summed delta is
    re-compressed by truncated SVD and the residual is reported; --rank auto gives each module the smallest rank
    whose residual is within --max-residual.

    Examples:

      fmnpatch merge circle.safetensors bob.safetensors -o circle+bob.safetensors

      fmnpatch merge a.safetensors b.safetensors c.safetensors --rank 8 -o abc-r8.safetensors --json

      fmnpatch merge a.safetensors b.safetensors c.safetensors --rank auto -o abc.safetensors
    """
    if rank is None and max_residual is not None:
        raise FmnPatchError(
            f"--max-residual {max_residual:g} only applies to --rank auto; add --rank auto, or drop --max-residual "
            "for an exact merge"
        )
    rank_, target = chosen_rank(rank, max_residual) if rank is not None else (None, MAX_RESIDUAL)
    check_output(output, overwrite=overwrite, suffixes=(".safetensors",), what="--output")
    merged, report = merge_patches(
        load_patches(patches), weight, rank=rank_, max_residual=target, title=title
    )
    path = merged.save(output, overwrite=overwrite)
    size = path.stat().st_size
    info(
        f"merged {len(patches)} patches: {rank_line(merged)} ({size / 1024:,.0f} KiB), residual {report.total:.3g}"
    )
    if json_out:
        echo_json(
            {
                "output": str(path),
                "rank": merged.rank,
                "ranks": merged.rank_summary(),
                "bytes": size,
                "residual": report.total,
                "residuals": report.residuals,
            }
        )
    else:
        typer.echo(str(path))
