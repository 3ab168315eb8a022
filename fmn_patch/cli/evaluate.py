"""``fmnpatch eval``: ConceptBench and M-Score of a base model, and of the base with patches stacked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..concepts.bench import load_bench
from ..evaluation.mscore import SamplerConfig
from ..evaluation.report import evaluate_patches, write_report
from ..families.base import default_bench
from ..files import check_output
from ..format.merge import check_weights
from .options import (
    BaseArg,
    BatchOpt,
    BenchOpt,
    ClipOpt,
    Device,
    Dtype,
    GuidanceOpt,
    JsonOut,
    Overwrite,
    SeedsOpt,
    StepsOpt,
    Strict,
    Weights,
    echo_json,
    info,
    keep_apart,
    load_judged,
    load_patches,
)


def eval_command(
    base: BaseArg,
    patches: Annotated[
        list[Path] | None, typer.Argument(help="Patches to stack on the base (none: base only).")
    ] = None,
    bench: BenchOpt = None,
    clip: ClipOpt = None,
    concept: Annotated[list[str] | None, typer.Option(help="Score only these concepts (repeatable).")] = None,
    seeds: SeedsOpt = 2,
    steps: StepsOpt = 20,
    guidance: GuidanceOpt = 5.0,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for report.json, report.md, grid.png.")
    ] = Path("fmnpatch-eval"),
    weight: Weights = None,
    strict: Strict = False,
    overwrite: Overwrite = False,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    batch_size: BatchOpt = SamplerConfig.batch_size,
    json_out: JsonOut = False,
) -> None:
    """Generate each concept's prompts with the base and the patched model, judge them, and report M-Score,
    Acc (the share of images judged to show the concept), alias Acc and Acc_kept.

    The toy model is judged by the bundled toy judge; real checkpoints by a zero-shot CLIP judge whose weights you
    give with --clip. Deterministic for a given set of seeds.

    Examples:

      fmnpatch eval toy

      fmnpatch eval toy forget-circle.safetensors --json

      fmnpatch eval ./sd15 forget-elon.safetensors --bench real --clip openai/clip-vit-large-patch14

      accelerate launch --num_processes 4 -m fmn_patch eval ./sd15 forget-elon.safetensors --device cuda ...

    Under `accelerate launch` the processes share the images (the report is the same as one process's) and the
    main process alone writes the report and prints.
    """
    sampler = SamplerConfig(
        steps=steps, guidance=guidance, seeds=SamplerConfig.first_seeds(seeds), batch_size=batch_size
    )
    keep_apart(base, output)
    check_output(output, overwrite=True, folder=True, what="--output")
    for path in ("report.json", "report.md", "grid.png"):
        check_output(output / path, overwrite=overwrite, what="--output")
    loaded = load_patches(patches or [], require_hash=strict)
    check_weights(loaded, weight)
    early = bench or default_bench(base)  # a bench known before the base loads fails fast
    chosen = load_bench(early) if early is not None else None
    model, the_bench, judge, procs = load_judged(base, chosen, device, dtype, clip)
    report = evaluate_patches(
        model,
        loaded,
        the_bench,
        judge,
        sampler,
        patch_names=[str(p) for p in patches or []],
        weights=weight,
        concepts=concept,
        strict=strict,
    )
    if not procs.is_main:
        return
    paths = write_report(report, output, overwrite=overwrite)
    info(report.to_markdown())
    if report.throughput is not None:
        info(report.throughput.line())
    if json_out:
        echo_json(report.to_dict())
    else:
        for written in paths.values():
            typer.echo(str(written))
