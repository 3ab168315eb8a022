"""``fmnpatch push``: a patch and a model card made from its header, to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..hub.transfer import push as push_patch
from .options import JsonOut, PatchArg, echo_json, info


def push(
    patch: PatchArg,
    repo_id: Annotated[
        str,
        typer.Argument(
            help="ORG/NAME of the model repo (created if needed); ORG/NAME/FILE.safetensors names the file."
        ),
    ],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    revision: Annotated[
        str | None, typer.Option(help="Branch to commit to (created from main if needed; default main).")
    ] = None,
    grid: Annotated[
        Path | None,
        typer.Option(help="A before/after PNG to show in the card (e.g. from `fmnpatch apply --prompt`)."),
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(help="Hub id of the base for the card, when the header names a local copy of it."),
    ] = None,
    license: Annotated[
        str | None, typer.Option(help="Hub license id for the card (default: the header's, else `other`).")
    ] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    json_out: JsonOut = False,
) -> None:
    """Push a patch to the Hub with a model card generated from its header, in one commit.

    The card lists the concepts forgotten, method, rank, size, the base it was made for, how to load it (stock
    diffusers and `fmnpatch apply`), the results the patch carries, and the --grid image. Needs a login:
    `hf auth login` or HF_TOKEN. Prints the reference to use it by.

    Examples:

      fmnpatch push forget-elon.safetensors acme/forget-elon

      fmnpatch push forget-elon.safetensors acme/forget-elon --grid fmnpatch-preview.png --private

      fmnpatch push forget-elon.safetensors acme/celebs/elon.safetensors --revision dev --json
    """
    pushed = push_patch(
        patch,
        repo_id,
        private=private,
        revision=revision,
        grid=grid,
        base_model=base_model,
        license=license,
        commit_message=message,
    )
    info(f"committed {pushed.commit[:12]}: {pushed.url}")
    if json_out:
        echo_json(
            {
                "repo_id": pushed.repo_id,
                "filename": pushed.filename,
                "revision": pushed.revision,
                "commit": pushed.commit,
                "url": pushed.url,
                "ref": str(pushed.ref),
                "pinned": str(pushed.pinned),
            }
        )
    else:
        typer.echo(str(pushed.ref))
