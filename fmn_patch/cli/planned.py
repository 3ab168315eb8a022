"""Commands of the toolkit whose capability is not built yet: they say so and exit non-zero."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import NotBuiltError

# name -> what it will do; each is listed by `fmnpatch --help` and fails plainly until built. None at present.
PLANNED: dict[str, str] = {}


def planned_command(name: str, what: str):
    def command(args: Annotated[list[str] | None, typer.Argument(help="(not used yet)")] = None) -> None:
        raise NotBuiltError(
            f"`fmnpatch {name}` is not built yet in this release ({what}); see the README roadmap"
        )

    command.__doc__ = f"[not built yet] {what[0].upper()}{what[1:]}."
    return command
