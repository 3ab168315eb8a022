"""``fmnpatch inspect``: what a patch forgets, for which base, at what rank and size."""

from __future__ import annotations

import typer

from ..families.export import use_with
from ..format.patch import Patch
from ..format.summary import render_text, summarize
from .options import JsonOut, PatchArg, echo_json, patch_path


def inspect(patch: PatchArg, json_out: JsonOut = False) -> None:
    """Show a patch's header, concepts, base, rank, size and per-module delta norms (validates the file).

    Examples:

      fmnpatch inspect forget-circle.safetensors

      fmnpatch inspect forget-circle.safetensors --json | jq .concepts
    """
    path = patch_path(patch)
    loaded = Patch.load(path)
    summary = summarize(loaded, path, use_with=use_with(loaded))
    if json_out:
        echo_json(summary)
    else:
        typer.echo(render_text(summary))
