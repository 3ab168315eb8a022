"""``fmnpatch edit``: closed-form, data-free forgetting of one or many concepts (no images, no training)."""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Annotated

import typer

from .. import processes
from ..errors import FmnPatchError
from ..families.base import check_base, load_base
from ..files import check_output, read_lines
from ..format.lowrank import AUTO_CAP
from ..methods.each import EachConfig, Recipe, build_each
from ..methods.edit import METHOD, edit_patch
from ..methods.editor import ERASE, ERASE_DEFAULT, EditConfig
from ..methods.request import chosen_preset, configured_base, patch_filename, refuse_early, wanted_concepts
from ..values import AUTO
from .options import (
    BaseOpt,
    Device,
    Dtype,
    EachOpt,
    JsonOut,
    MaxResidual,
    Overwrite,
    ResumeOpt,
    chosen_rank,
    each_folder,
    echo_json,
    info,
    keep_apart,
    rank_line,
    report_each,
    saying_what_was_written,
    where_to_use,
)

_DEFAULT = EditConfig()


def edit(
    concepts: Annotated[
        list[str] | None,
        typer.Argument(
            help="Concepts to forget: NAME or NAME=ALIAS,ALIAS (aliases are erased too).", show_default=False
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Forget a shipped concept list (nsfw); CONCEPTS join its terms, with its anchor."),
    ] = None,
    base: BaseOpt = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The patch (.safetensors); default forget-CONCEPT.safetensors."),
    ] = None,
    anchor: Annotated[
        str | None,
        typer.Option(
            help="What the concepts become (default: the preset's, else per category: a person, shape, ...)."
        ),
    ] = None,
    category: Annotated[
        str | None,
        typer.Option(
            help="Category of concepts the ConceptBench does not know: identity, object, style, nsfw (or id, obj)."
        ),
    ] = None,
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="More concepts, one per line (NAME or NAME=ALIAS,...).")
    ] = None,
    preserve_file: Annotated[
        Path | None, typer.Option("--preserve-file", help="Prompts to keep unchanged, one per line.")
    ] = None,
    rank: Annotated[
        str,
        typer.Option(
            help="LoRA rank of the patch, or auto: per layer the smallest rank within --max-residual.",
            metavar="R|auto",
        ),
    ] = str(_DEFAULT.rank),
    max_residual: MaxResidual = None,
    push: Annotated[
        float, typer.Option(help="How far past the anchor the keys/values go (0: onto it).")
    ] = _DEFAULT.push,
    lam: Annotated[float, typer.Option(help="Ridge weight pulling toward the base weights.")] = _DEFAULT.lam,
    erase_weight: Annotated[
        float | None,
        typer.Option(
            help="Weight of the erase rows vs preserved ones [default: per concept, its category's: "
            + ", ".join(f"{c} {w:g}" for c, w in ERASE.items())
            + f", others {ERASE_DEFAULT:g}]."
        ),
    ] = _DEFAULT.erase_weight,
    bench: Annotated[
        str | None,
        typer.Option(help="ConceptBench for templates and preserve set: toy, real, a JSON path, none."),
    ] = None,
    each: EachOpt = False,
    resume: ResumeOpt = False,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Forget concepts in closed form: re-map their text keys/values onto an anchor's, keep everything else.

    Data-free: no images and no gradient steps; the cost is text encoding (under a second on the toy model, minutes
    for a thousand concepts on an SD-1.5-size text encoder on CPU).
    The result is an ordinary patch that stacks, merges and loads in stock diffusers. The residual of the rank-R
    truncation is reported and kept in the patch header; --rank auto picks each layer's rank from its residual.

    What it is: a least-squares solve per key/value projection that treats the projection's input as a function of
    the text alone. That holds for UNet models (SD 1.x, 2.x, SDXL), whose cross-attention reads the text encoder's
    output. It is refused for SD3/3.5 and Flux: their text keys/values read the text stream, which from block 1 on
    has attended over the image and at every block is modulated by the timestep (the assumption is exact only at
    block 0, per timestep); use `fmnpatch train` there.

    Examples:

      fmnpatch edit circle=disc -o no-circle.safetensors

      fmnpatch edit "Elon Musk" --base runwayml/stable-diffusion-v1-5 --anchor "a man" --rank 16

      fmnpatch edit --from-file celebrities.txt --preserve-file keep.txt --base ./sd15 -o celebs.safetensors --json

      fmnpatch edit --preset nsfw --base ./sd15 -o no-nsfw.safetensors   # nudity, sexual content -> "fully clothed"

      fmnpatch edit --from-file celebrities.txt --base ./sd15 --rank auto --max-residual 0.1 -o celebs.safetensors

      fmnpatch edit --from-file celebrities.txt --each -o celebs/ --base ./sd15   # one patch per line, --resume
    """
    names = list(concepts or []) + (read_lines(from_file) if from_file else [])
    if resume and not each:
        raise FmnPatchError("--resume continues an --each run; add --each (one patch per concept)")
    if each and preset is not None:
        raise FmnPatchError("--each does not combine with --preset; give the concepts with --from-file")
    chosen = chosen_preset(preset, names)
    if chosen is not None and category is not None:
        raise FmnPatchError(
            f"--category does not combine with --preset: every concept of preset {chosen.name!r} is "
            f"{chosen.category}; edit other concepts into a separate patch and stack the two"
        )
    if not names and chosen is None:
        raise FmnPatchError(
            "no concept given; name one (fmnpatch edit circle), pass --from-file FILE or --preset nsfw"
        )
    preserve = read_lines(preserve_file) if preserve_file else []
    rank_, within = chosen_rank(rank, max_residual)
    config = EditConfig(
        rank=rank_, max_residual=within, lam=lam, erase_weight=erase_weight, push=push, bench=bench
    )
    device = processes.current().device(device)
    base = configured_base(base, [chosen.name] if chosen is not None else names)
    refuse_early(base, "edit")  # before minutes of loading a large base
    check_base(base)  # the folder's structure, before any concept (--each) or loading
    keep_apart(base, each_folder(output, "patches") if each else output)
    if each:
        target = EachConfig(each_folder(output, "patches"), resume=resume, overwrite=overwrite)
        loaded = functools.cache(lambda: load_base(base, device=device, dtype=dtype))
        options = {**dataclasses.asdict(config), "anchor": anchor, "category": category, "preserve": preserve}
        with saying_what_was_written():
            report = build_each(
                names,
                lambda c: edit_patch(
                    loaded(), [c], anchor=anchor, preserve=preserve, config=config, category=category
                ),
                target,
                recipe=Recipe(METHOD, {**options, "dtype": dtype}, lambda: loaded().describe().hash),
            )
        report_each(report, json_out)  # one patch per concept: each made exactly as `fmnpatch edit CONCEPT`
        return
    output = output or Path(patch_filename(names, chosen))
    keep_apart(base, output)
    check_output(output, overwrite=overwrite, suffixes=(".safetensors",), what="--output")
    erase = wanted_concepts(names, chosen, anchor)
    model = load_base(base, device=device, dtype=dtype)
    patch = edit_patch(model, erase, anchor=anchor, preserve=preserve, config=config, category=category)
    t0 = time.perf_counter()
    path = patch.save(output, overwrite=overwrite)
    extra = patch.info.extra
    seconds = {**extra["seconds"], "write": time.perf_counter() - t0}
    size = path.stat().st_size
    info(
        f"erased {len(patch.info.concepts)} concept(s) into a patch of {rank_line(patch)} ({size / 1024:,.0f} KiB): "
        f"residual {extra['residual']:.3g}{_over(extra['residuals'], config)}, {extra['rows']['erase']} erase / "
        f"{extra['rows']['preserve']} preserve rows, {seconds['total']:.2f} s"
    )
    info(where_to_use(patch, path))
    if json_out:
        echo_json(
            {
                "output": str(path),
                "concepts": patch.concept_names,
                "rank": patch.rank,
                "ranks": patch.rank_summary(),
                "bytes": size,
                "residual": extra["residual"],
                "residuals": extra["residuals"],
                "rows": extra["rows"],
                "seconds": seconds,
            }
        )
    else:
        typer.echo(str(path))


def _over(residuals: dict[str, float], config: EditConfig) -> str:
    """At rank auto: how many layers stayed above the target at the largest rank auto gives."""
    if config.rank != AUTO:
        return ""
    over = sum(r > config.max_residual for r in residuals.values())
    cap = f"; {over} at rank {AUTO_CAP} still above it" if over else ""
    return f" (each layer within {config.max_residual:g}{cap})"
