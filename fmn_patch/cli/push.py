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
            help="ORG/NAME of the model repo (created if needed); ORG/NAME[@BRANCH]/FILE.safetensors names the file."
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
    force: Annotated[
        bool, typer.Option("--force", help="Publish a header that names local paths (refused by default).")
    ] = False,
    json_out: JsonOut = False,
) -> None:
    """Push a patch, its kohya export and a model card generated from its header, in one commit.

    The native file is for diffusers and fmn-patch, the kohya export (NAME.kohya.safetensors) for ComfyUI and
    AUTOMATIC1111; the card says so, lists the concepts forgotten, method, rank, size, the base it was made for,
    how to load it, the results the patch carries, and the --grid image. A header naming an absolute local path is
    refused unless --force. Needs a login: `hf auth login` or HF_TOKEN. Prints the reference to use it by.

    Examples:

      fmnpatch push forget-elon.safetensors acme/forget-elon

      fmnpatch push forget-elon.safetensors acme/forget-elon --grid fmnpatch-preview.png --private

      fmnpatch push forget-elon.safetensors acme/celebs@dev/elon.safetensors --json
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
        force=force,
    )
    info(f"committed {pushed.commit[:12]}: {pushed.url}")
    if json_out:
        echo_json(
            {
                "repo_id": pushed.repo_id,
                "filename": pushed.filename,
                "kohya_filename": pushed.kohya_filename,
                "revision": pushed.revision,
                "commit": pushed.commit,
                "url": pushed.url,
                "ref": str(pushed.ref),
                "pinned": str(pushed.pinned),
            }
        )
    else:
        typer.echo(str(pushed.ref))
