"""The Attack tab: the harness (paraphrases, Concept Inversion at a chosen budget) against a patch; its report and
images."""

from typing import Any

import gradio as gr

from .. import (
    AttackConfig,
    FmnPatchError,
    InversionAttackConfig,
    SamplerConfig,
    load_bench,
    load_judge,
    run_attacks,
)
from .context import PageContext, count
from .feedback import shown
from .sources import gathered

ATTACKS = ["paraphrase", "inversion"]


def attack_tab(ctx: PageContext, made: gr.State) -> None:
    with gr.Tab("Attack"):
        with gr.Row():
            base = gr.Textbox("toy", label="Base")
            concept = gr.Textbox("circle", label="Erased concept", info="as the base's ConceptBench names it")
        with gr.Row():
            use_made = gr.Checkbox(True, label="The patch made or pulled on this page")
            upload = gr.File(label="Or a patch (.safetensors)", file_count="single", elem_id="attack-upload")
        with gr.Row():
            attacks = gr.CheckboxGroup(ATTACKS, value=ATTACKS, label="Attacks")
            budget = gr.Number(50, label="Concept Inversion steps", precision=0)
            images = gr.Number(8, label="Concept Inversion images", precision=0)
        go = gr.Button("Attack", variant="primary", elem_id="attack-go")
        report = gr.Markdown(elem_id="attack-report")
        grid = gr.Image(label="What each attack drew", type="pil", interactive=False, elem_id="attack-grid")

    @shown
    def run(
        base: str,
        concept: str,
        use_made: bool,
        upload: str | None,
        attacks: list[str],
        budget: float | None,
        images: float | None,
        made: str | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, Any]:
        if not (concept or "").strip():
            raise FmnPatchError("no concept given; name the erased concept, e.g. circle")
        ref = ctx.base(base)
        name, patch = gathered(ctx, request, [upload] if upload else [], "", made, use_made and not upload)[0]
        config = AttackConfig(
            attacks=tuple(attacks or ()),
            sampler=SamplerConfig(seeds=(0,)),
            inversion=InversionAttackConfig(
                steps=count(budget, "Concept Inversion steps", low=1) or 1,
                images=count(images, "Concept Inversion images", low=1) or 1,
            ),
        )
        with ctx.job(request, progress):
            model = ctx.bases.get(ref)
            bench = load_bench(model.bench)
            judge = load_judge(bench, ctx.config.device)
            done = run_attacks(
                model, [patch], bench.concept(concept.strip()), judge, bench, config, patch_names=[name]
            )
        return done.to_markdown(), done.grid

    inputs = [base, concept, use_made, upload, attacks, budget, images, made]
    go.click(run, inputs, [report, grid], api_name="attack", concurrency_id="job")
