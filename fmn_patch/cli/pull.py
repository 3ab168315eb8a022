"""``fmnpatch pull``: a community patch from the Hugging Face Hub, verified, into the cache or a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..format.summary import summarize
from ..hub.transfer import pull as pull_patch
from ..text import printable
from .options import JsonOut, Overwrite, echo_json, info


def pull(
    ref: Annotated[
        str,
        typer.Argument(
            help="ORG/NAME[@REVISION], or hf://ORG/NAME[/FILE.safetensors][@REVISION].", show_default=False
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Copy the patch here: a .safetensors path, or else a folder."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Hugging Face cache folder (default: HF_HUB_CACHE, ~/.cache/huggingface/hub)."),
    ] = None,
    force_download: Annotated[
        bool, typer.Option("--force-download", help="Download again even if the file is in the cache.")
    ] = False,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Pull a patch from the Hub and verify it (safetensors only, tensor hash matches the header).

    The file is kept in the Hugging Face cache, so later `hf://` references to it work offline (HF_HUB_OFFLINE=1).
    Shows what it forgets and the base it was made for; `fmnpatch apply` warns if your base differs (errors with
    --strict). Prints the local path.

    Examples:

      fmnpatch pull acme/forget-elon

      fmnpatch pull acme/forget-elon@v1 -o forget-elon.safetensors

      HF_HUB_OFFLINE=1 fmnpatch pull hf://acme/celebs/elon.safetensors --json
    """
    pulled = pull_patch(ref, output, overwrite=overwrite, cache_dir=cache_dir, force_download=force_download)
    patch = pulled.patch
    concepts = ", ".join(f"{c.name} ({c.category})" for c in patch.info.concepts) or "-"
    checked = "verified" if patch.verified else "pulled (NOT verified: no hash in the header)"
    info(
        printable(
            f"{checked} {pulled.pinned}: forgets {concepts}; tensor hash {patch.tensor_hash()[:12]}", 1000
        )
    )
    info(
        printable(
            f"made for base {patch.info.base_model or 'unknown'} [{patch.info.architecture}]"
            + (f", target hash {patch.info.base_hash[:12]}" if patch.info.base_hash else ""),
            1000,
        )
    )
    if json_out:
        echo_json({**summarize(patch, pulled.path), "ref": str(pulled.ref), "pinned": str(pulled.pinned)})
    else:
        typer.echo(str(pulled.path))
