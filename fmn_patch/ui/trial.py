"""The Try tab: one or more patches, with weights, on a prompt and seeds; the base and the patched model side by
side."""

from typing import Any

import gradio as gr

from .. import FmnPatchError, SampleConfig, preview
from .context import PageContext, count
from .feedback import shown
from .sources import gathered, numbers


def try_tab(ctx: PageContext, made: gr.State) -> None:
    with gr.Tab("Try"):
        with gr.Row():
            base = gr.Textbox("toy", label="Base")
            use_made = gr.Checkbox(True, label="The patch made or pulled on this page")
        uploads = gr.File(label="Patches (.safetensors)", file_count="multiple", elem_id="try-uploads")
        refs = gr.Textbox(label="Hub patches", lines=1, placeholder="hf://ORG/NAME, one a line")
        with gr.Row():
            weights = gr.Textbox(
                "1", label="Weights", info="one per patch, in order; one value applies to all"
            )
            seeds = gr.Textbox("0, 1", label="Seeds")
            steps = gr.Number(20, label="Sampler steps", precision=0)
        prompt = gr.Textbox("a red circle", label="Prompt")
        go = gr.Button("Try", variant="primary", elem_id="try-go")
        grid = gr.Image(label="Base | patched", type="pil", interactive=False, elem_id="try-grid")

    @shown
    def run(
        base: str,
        use_made: bool,
        uploads: list[str] | None,
        refs: str,
        weights: str,
        seeds: str,
        steps: float | None,
        prompt: str,
        made: str | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ) -> Any:
        if not (prompt or "").strip():
            raise FmnPatchError("no prompt given; type what to draw, e.g. a red circle")
        ref = ctx.base(base)
        chosen = gathered(ctx, request, uploads, refs, made, use_made)
        scale = numbers(weights, "weights") or [1.0]
        if len(scale) not in (1, len(chosen)):
            raise FmnPatchError(f"{len(scale)} weights for {len(chosen)} patches; give one, or one each")
        config = SampleConfig(steps=count(steps, "steps") or SampleConfig.steps)
        with ctx.job(request, progress):
            model = ctx.bases.get(ref)
            patches = [patch for _, patch in chosen]
            weighed = scale * len(patches) if len(scale) == 1 else scale
            return preview(
                model,
                patches,
                [prompt.strip()],
                weights=weighed,
                seeds=numbers(seeds, "seeds", int) or [0],
                config=config,
            )

    inputs = [base, use_made, uploads, refs, weights, seeds, steps, prompt, made]
    go.click(run, inputs, grid, api_name="try", concurrency_id="job")
