"""``fmnpatch ui``: the web page (Gradio), on this machine by default."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import FmnPatchError
from .options import Device


def ui(
    host: Annotated[
        str,
        typer.Option(
            help="Address to bind. Another than 127.0.0.1/localhost serves every machine that reaches "
            "this one and needs --public."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(
            help="Port to listen on [default: Gradio's, 7860 or the next free one].", show_default=False
        ),
    ] = None,
    public: Annotated[
        bool, typer.Option("--public", help="Allow a --host that other machines reach (e.g. 0.0.0.0).")
    ] = False,
    share: Annotated[
        bool,
        typer.Option(
            "--share",
            help="Also open a public gradio.live link through Gradio's tunnel (anyone with it "
            "can use the page).",
        ),
    ] = False,
    no_local_paths: Annotated[
        bool,
        typer.Option(
            "--no-local-paths",
            help="For a hosted page: refuse local folder bases and preset files (toy and Hub ids only).",
        ),
    ] = False,
    max_upload_mb: Annotated[
        int, typer.Option(help="Largest patch upload, in MiB; a larger one is refused before it is read.")
    ] = 256,
    device: Device = "cpu",
) -> None:
    """Serve the web page: make (Forget), try, attack, inspect and share patches from a browser.

    Needs the ui extra: pip install 'fmn-patch[ui]'. It binds 127.0.0.1 unless told otherwise; jobs run one at a
    time, with the library's progress on the page and a Cancel button; downloads come from each visitor's own
    temporary folder. A Hub token typed in the page is used for that push only and never written anywhere.

    Examples:

      fmnpatch ui   # http://127.0.0.1:7860

      fmnpatch ui --port 8080

      fmnpatch ui --host 0.0.0.0 --public --no-local-paths   # a hosted page: toy and Hub bases only
    """
    try:
        from ..ui import PageConfig, serve
    except ImportError as e:
        raise FmnPatchError(
            f"the web page needs gradio ({e.name or e} is missing); install it with: pip install 'fmn-patch[ui]'"
        ) from e
    config = PageConfig(
        host=host,
        port=port,
        public=public,
        share=share,
        local_paths=not no_local_paths,
        max_upload_mb=max_upload_mb,
        device=device,
    )
    serve(config)
