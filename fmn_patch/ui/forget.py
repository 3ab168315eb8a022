"""The Forget tab: a base, concepts (or a preset), a method and the few options people change; the patch to
download (native and kohya), its inspect card and a before/after grid from a quick ConceptBench check."""

import contextlib
import time
from pathlib import Path
from typing import Any

import gradio as gr

from .. import (
    FmnPatchError,
    ForgetRequest,
    Patch,
    check_prompts,
    export_kohya,
    forget,
    known_presets,
    load_bench,
    outlook,
    phase,
    preview,
    render_text,
    summarize,
)
from .context import PageContext, count
from .feedback import one_line, shown

#: The method as the page names it -> as the library does.
METHODS = {"edit": "edit", "train": "train", "train --robust": "robust"}
FROM_BENCH = "(the bench's)"
NO_PRESET = "(none)"
CATEGORIES = [FROM_BENCH, "identity", "object", "style", "nsfw"]


def forget_tab(ctx: PageContext) -> gr.State:
    """Build the tab; returns the state holding the path of the patch made here last (for Try, Attack, Share)."""
    made = gr.State(None)
    with gr.Tab("Forget"):
        with gr.Row():
            base = gr.Textbox(
                "toy", label="Base", info="toy, a Hub repo id (ORG/NAME), or a local diffusers folder"
            )
            family = gr.Markdown(_family("toy"))
        concepts = gr.Textbox(
            label="Concepts",
            lines=2,
            placeholder="circle\nbob=robert",
            info="one a line: NAME or NAME=ALIAS,ALIAS",
        )
        with gr.Row():
            category = gr.Dropdown(CATEGORIES, value=FROM_BENCH, label="Category")
            anchor = gr.Textbox(label="Anchor", placeholder="what they become (default: the bench's)")
            preset = gr.Dropdown([NO_PRESET, *known_presets()], value=NO_PRESET, label="Preset")
        method = gr.Radio(list(METHODS), value="edit", label="Method")
        with gr.Row():
            rank = gr.Number(0, label="Rank", precision=0, info="0: the method's default")
            steps = gr.Number(0, label="Steps", precision=0, info="train only; 0: what the start needs")
            seed = gr.Number(0, label="Seed", precision=0)
        with gr.Row():
            go = gr.Button("Forget", variant="primary", elem_id="forget-go")
            stop = gr.Button("Cancel", elem_id="forget-cancel")
        status = gr.Textbox(label="Status", interactive=False, elem_id="forget-status")
        grid = gr.Image(label="Before / after", type="pil", interactive=False, elem_id="forget-grid")
        files = gr.File(
            label="Patch: native and kohya", file_count="multiple", interactive=False, elem_id="forget-files"
        )
        card = gr.Code(
            label="Inspect", interactive=False, elem_id="forget-card"
        )  # monospace: aligned columns

    @shown
    def read_family(ref: str) -> str:
        return _family(ctx.base(ref))

    @shown
    def make(
        base: str,
        concepts: str,
        category: str,
        anchor: str,
        preset: str,
        method: str,
        rank: float | None,
        steps: float | None,
        seed: float | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, ...]:
        fields = (base, concepts, category, anchor, preset, method, rank, steps, seed)
        return forget_job(ctx, *fields, request=request, bar=progress)

    def cancel(request: gr.Request) -> None:
        ctx.sessions.flag(request).set()

    base.blur(read_family, base, family, api_name="family", concurrency_limit=None)
    inputs = [base, concepts, category, anchor, preset, method, rank, steps, seed]
    outputs = [status, files, card, grid, made, family]
    go.click(make, inputs, outputs, api_name="forget", concurrency_id="job")
    stop.click(cancel, None, None, api_name="cancel", concurrency_limit=None)
    return made


def _family(ref: str) -> str:
    """What the base's index says of its family, and the methods it refuses (in the CLI's words)."""
    seen = outlook(ref)
    if seen.family is None:
        return "**Family:** read when the base loads."
    refused = "".join(f"\n- {m}: {one_line(FmnPatchError(why))}" for m, why in seen.refusals.items())
    return f"**Family:** {seen.family}; methods: {', '.join(seen.methods)}{refused}"


def forget_job(
    ctx: PageContext,
    base: str,
    concepts: str,
    category: str,
    anchor: str,
    preset: str,
    method: str,
    rank: float | None,
    steps: float | None,
    seed: float | None,
    *,
    request: gr.Request | None,
    bar: gr.Progress,
) -> tuple[str, list[str], str, Any, str, str]:
    """One patch made for a visitor: checked before any loading, written to their folder only once done."""
    if method not in METHODS:
        raise FmnPatchError(f"method {method!r} is not one of {', '.join(METHODS)}")
    wanted = ForgetRequest(
        concepts=tuple((concepts or "").splitlines()),
        preset=None if preset in (None, NO_PRESET) else preset,
        base=ctx.base(base),
        method=METHODS[method],  # type: ignore[arg-type]  # one of the library's methods
        category=None if category in (None, FROM_BENCH) else category,
        anchor=(anchor or "").strip() or None,
        rank=count(rank, "rank") or None,  # 0 or empty: the method's default
        steps=count(steps, "steps") or None,
        seed=count(seed, "seed") or 0,
        local_paths=ctx.config.local_paths,
    )
    ref = wanted.base_ref()  # refused here, before minutes of loading
    folder = ctx.sessions.folder(request)
    started = time.perf_counter()
    with ctx.job(request, bar):
        model = ctx.bases.get(ref)
        patch = forget(wanted, model)
        grid = preview(model, [patch], check_prompts(load_bench(model.bench), patch), seeds=(0,))
        with phase("writing the patch"):  # the last point where Cancel stops the job
            written = _write(patch, folder / wanted.filename())
    seconds = time.perf_counter() - started
    status = (
        f"forgot {', '.join(patch.concept_names)} with {method} on {ref} ({model.family.name}) in {seconds:.1f}s: "
        f"{written[0].name}"
    )
    card = render_text(summarize(Patch.load(written[0]), written[0]))  # as written: with its tensor hash
    family = f"**Family:** {model.family.name}, read from the loaded base."
    return one_line(FmnPatchError(status)), [str(p) for p in written], card, grid, str(written[0]), family


def _write(patch: Patch, path: Path) -> list[Path]:
    """The patch and, where its family has one, its kohya export beside it (for ComfyUI and AUTOMATIC1111)."""
    written = [patch.save(path, overwrite=True)]
    with contextlib.suppress(FmnPatchError):  # SD3 has no kohya form: its UIs read the native file
        written.append(export_kohya(patch, path.with_name(path.stem + ".kohya.safetensors"), overwrite=True))
    return written
