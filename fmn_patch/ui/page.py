"""The page: its tabs in one Gradio Blocks, one job at a time (Gradio's queue), served where the config says."""

import gradio as gr

from .attack import attack_tab
from .bases import LoadedBase
from .config import PageConfig
from .context import PageContext
from .forget import forget_tab
from .inspect import inspect_tab
from .session import Sessions
from .share import share_tab
from .trial import try_tab

TITLE = "fmn-patch"
INTRO = (
    "# fmn-patch\nMake a text-to-image model forget a concept with a small LoRA patch; try it, attack it, inspect "
    "it and share it. The bundled `toy` model runs every job in seconds on a CPU."
)
#: Gradio's own copies of uploads and results: swept hourly of those older than a day.
CACHE_SWEEP = (3600, 86400)


def build_page(config: PageConfig | None = None) -> tuple[gr.Blocks, PageContext]:
    """The page and what its tabs share (``context.sessions.close()`` removes every visitor's files)."""
    config = config or PageConfig()
    ctx = PageContext(config, Sessions(), LoadedBase(config.device))
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=CACHE_SWEEP) as page:
        gr.Markdown(INTRO)
        made = forget_tab(ctx)
        try_tab(ctx, made)
        attack_tab(ctx, made)
        share_tab(ctx, made)
        inspect_tab(ctx)

        def ended(request: gr.Request) -> None:
            ctx.sessions.end(request)

        page.unload(ended)
    page.queue(default_concurrency_limit=1)  # one job at a time per process; light handlers opt out
    return page, ctx


def serve(config: PageConfig | None = None, *, block: bool = True) -> tuple[gr.Blocks, PageContext]:
    """Build the page and serve it (``block=False``: return once it listens, for tests and notebooks; then
    ``page.close()`` and ``context.sessions.close()`` end it)."""
    config = config or PageConfig()
    page, ctx = build_page(config)
    try:
        page.launch(
            server_name=config.host,
            server_port=config.port,
            share=config.share,  # always given: GRADIO_SHARE in the environment does not open a tunnel
            max_file_size=config.max_upload_bytes,
            show_error=False,
            ssr_mode=False,
            mcp_server=False,
            enable_monitoring=False,
            inbrowser=False,
            run_history=False,  # it would keep every input, a Hub token too, in the browser's storage
            allowed_paths=[],  # given: GRADIO_ALLOWED_PATHS in the environment opens no folder
            prevent_thread_lock=not block,
        )
    finally:
        if block:
            ctx.sessions.close()
    return page, ctx
