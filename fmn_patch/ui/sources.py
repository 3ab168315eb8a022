"""Where a tab's patches come from: uploads, the patch made on the Forget tab (or pulled on Share), and Hub
references (``hf://ORG/NAME``), each pulled into the visitor's folder and validated."""

from pathlib import Path

import gradio as gr

from .. import FmnPatchError, Patch, pull
from .context import PageContext


def gathered(
    ctx: PageContext,
    request: gr.Request | None,
    uploads: list[str] | None,
    refs: str,
    made: str | None,
    use_made: bool,
) -> list[tuple[str, Patch]]:
    """(name, patch) of every patch a visitor chose, in order: the made one, uploads, then Hub references."""
    found: list[tuple[str, Patch]] = []
    if use_made and made:
        found.append((Path(made).name, Patch.load(made)))
    for upload in uploads or []:
        patch, path = ctx.upload(upload)
        found.append((path.name, patch))
    for ref in (line.strip() for line in (refs or "").splitlines()):
        if ref:
            pulled = pull(ref, ctx.sessions.folder(request), overwrite=True)
            found.append((str(pulled.ref), pulled.patch))
    if not found:
        raise FmnPatchError(
            "no patch chosen; make one on Forget, upload a .safetensors file, or give hf://ORG/NAME"
        )
    return found


def numbers(text: str, name: str, kind: type = float) -> list:
    """Numbers typed as ``1, 0.5``: each checked, the bad one named."""
    out = []
    for part in (p.strip() for p in (text or "").replace(";", ",").split(",")):
        if not part:
            continue
        try:
            out.append(kind(part))
        except ValueError:
            raise FmnPatchError(
                f"{name}: {part!r} is not a {'whole ' if kind is int else ''}number; e.g. 1, 0.5"
            ) from None
    return out
