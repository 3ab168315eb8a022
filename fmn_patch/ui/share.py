"""The Share tab: push a patch with a preview of its model card (the token is typed here, used for that push
only, never stored or logged), search the Hub's community patches, and pull one into the page."""

from pathlib import Path
from typing import Any

import gradio as gr

from .. import CATEGORIES, FmnPatchError, card_preview, pull, push, render_text, search_hub, summarize
from .context import PageContext
from .feedback import one_line, shown

ANY = "(any)"
COLUMNS = ["repo", "title", "concepts", "categories", "base", "downloads"]


def share_tab(ctx: PageContext, made: gr.State) -> None:
    with gr.Tab("Share"):
        gr.Markdown("### Push")
        with gr.Row():
            use_made = gr.Checkbox(True, label="The patch made or pulled on this page")
            upload = gr.File(label="Or a patch (.safetensors)", file_count="single", elem_id="share-upload")
        with gr.Row():
            repo = gr.Textbox(label="Hub repo", placeholder="ORG/NAME")
            token = gr.Textbox(
                label="Hugging Face token (write)",
                type="password",
                info="used for this push only: not kept by the page, not written anywhere",
            )
            private = gr.Checkbox(False, label="Private")
        with gr.Row():
            look = gr.Button("Preview card", elem_id="share-preview")
            send = gr.Button("Push", variant="primary", elem_id="share-push")
        pushed = gr.Textbox(label="Pushed", interactive=False, elem_id="share-status")
        card = gr.Code(label="Model card", language="markdown", interactive=False, elem_id="share-card")
        gr.Markdown("### Search and pull")
        with gr.Row():
            text = gr.Textbox(label="Search", placeholder="e.g. van gogh")
            category = gr.Dropdown([ANY, *CATEGORIES], value=ANY, label="Category")
            base = gr.Textbox(label="Base (Hub id)", placeholder="e.g. runwayml/stable-diffusion-v1-5")
        find = gr.Button("Search", elem_id="share-search")
        found = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="share-found")
        with gr.Row():
            ref = gr.Textbox(label="Pull", placeholder="hf://ORG/NAME")
            fetch = gr.Button("Pull", elem_id="share-pull")
        pulled = gr.File(label="Pulled patch", interactive=False, elem_id="share-pulled")
        pulled_card = gr.Code(label="Its card", interactive=False)

    def chosen(upload: str | None, made: str | None, use_made: bool) -> Path:
        """The file of the patch to share: an upload (size-capped, read as a patch), else the page's own."""
        if upload:
            return ctx.upload(upload)[1]
        if use_made and made:
            return Path(made)
        raise FmnPatchError("no patch chosen; make or pull one on this page, or upload a .safetensors file")

    @shown
    def preview_card(upload: str | None, made: str | None, use_made: bool, repo: str) -> str:
        return card_preview(chosen(upload, made, use_made), _repo(repo))

    @shown
    def send_patch(
        upload: str | None, made: str | None, use_made: bool, repo: str, token: str, private: bool
    ) -> str:
        if not (token or "").strip():
            raise FmnPatchError(
                "pushing needs a Hugging Face token with write access; paste one in the token field"
            )
        done = push(chosen(upload, made, use_made), _repo(repo), private=private, token=token.strip())
        return one_line(FmnPatchError(f"pushed {done.filename} to {done.repo_id} ({done.url})"))

    @shown
    def find_patches(text: str, category: str, base: str) -> list[list[Any]]:
        hits = search_hub(
            (text or "").strip() or None,
            base=(base or "").strip() or None,
            categories=() if category in (None, ANY) else (category,),
        )
        return [
            [
                h.repo_id,
                h.title,
                ", ".join(c.name for c in h.concepts),
                ", ".join(h.categories),
                h.base_model,
                h.downloads,
            ]
            for h in hits
        ]

    @shown
    def pull_patch(ref: str, request: gr.Request) -> tuple[str, str, str]:
        if not (ref or "").strip():
            raise FmnPatchError("no patch named; give hf://ORG/NAME (a search result's repo)")
        got = pull(ref.strip(), ctx.sessions.folder(request), overwrite=True)
        return str(got.path), render_text(summarize(got.patch, got.path)), str(got.path)

    look.click(preview_card, [upload, made, use_made, repo], card, api_name="card", concurrency_limit=None)
    send.click(
        send_patch,
        [upload, made, use_made, repo, token, private],
        pushed,
        api_name="push",
        concurrency_id="job",
    )
    find.click(find_patches, [text, category, base], found, api_name="search", concurrency_id="job")
    fetch.click(pull_patch, ref, [pulled, pulled_card, made], api_name="pull", concurrency_id="job")


def _repo(text: str) -> str:
    repo = (text or "").strip()
    if not repo:
        raise FmnPatchError("no Hub repo given; write ORG/NAME, e.g. your-name/forget-circle")
    return repo
