"""``fmnpatch search``: community patches on the Hugging Face Hub, read from their headers remotely."""

from __future__ import annotations

from typing import Annotated

import typer

from ..hub.catalog import search as search_hub
from ..text import printable
from .options import JsonOut, echo_json


def search(
    text: Annotated[
        str | None, typer.Argument(help="Words to match in the repo id, title or a concept name.")
    ] = None,
    base: Annotated[
        str | None, typer.Option(help="Only patches made for this base (ORG/NAME or NAME).")
    ] = None,
    category: Annotated[
        list[str] | None,
        typer.Option(
            help="Only patches forgetting this category: identity, object, style, nsfw, other (repeatable)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many results.")] = 20,
    json_out: JsonOut = False,
) -> None:
    """Search community patches (Hub repos tagged `fmn-patch`), most downloaded first.

    Concepts, base, method and rank are read from each patch's header on the Hub without downloading it. Use a
    result with `fmnpatch pull REF` or directly as `fmnpatch apply BASE REF`.

    Examples:

      fmnpatch search

      fmnpatch search elon --base stable-diffusion-v1-5/stable-diffusion-v1-5

      fmnpatch search --category style --json
    """
    found = search_hub(text, base=base, categories=category or (), limit=limit)
    if json_out:
        echo_json(
            {
                "text": text,
                "base": base,
                "categories": category or [],
                "results": [p.to_dict() for p in found],
            }
        )
        return
    if not found:
        typer.echo("no community patches found", err=True)
        return
    for p in found:
        concepts = ", ".join(f"{c.name} ({c.category})" for c in p.concepts) or ", ".join(p.categories) or "-"
        method = f"{p.method}, rank {p.rank}" if p.method else "header not readable"
        typer.echo(
            f"{printable(p.ref)}\n    forgets {printable(concepts, 1000)}; base {printable(p.base_model or '-')}; "
            f"{printable(method)}; {p.downloads} downloads"
        )
