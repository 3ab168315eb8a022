"""The Inspect tab: a patch file's card (concepts, base, rank, size, per-module norms), read with safetensors only."""

import gradio as gr

from .. import render_text, summarize
from .context import PageContext
from .feedback import shown


def inspect_tab(ctx: PageContext) -> None:
    with gr.Tab("Inspect"):
        upload = gr.File(label="Patch (.safetensors)", file_count="single", elem_id="inspect-upload")
        card = gr.Code(label="Card", interactive=False, elem_id="inspect-card")

    @shown
    def read(file: str | None) -> str:
        patch, path = ctx.upload(file)
        return render_text(summarize(patch, path))

    upload.upload(read, upload, card, api_name="inspect", concurrency_limit=None)
