"""``fmnpatch train``: forget concepts by attention re-steering; the result is a patch file."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Annotated

import typer

from .. import processes, values
from ..errors import FmnPatchError
from ..families.base import check_base, load_base
from ..files import check_input, check_output, read_lines
from ..methods.each import EachConfig, Recipe, build_each
from ..methods.inversion import InversionConfig
from ..methods.request import chosen_preset, configured_base, patch_filename, refuse_early, wanted_concepts
from ..methods.resteer import ROBUST_ROUNDS, TrainConfig, train_patch, train_patch_with_inversion
from ..values import MAX_BATCH, MAX_STEPS
from .options import (
    BaseOpt,
    Device,
    Dtype,
    EachOpt,
    JsonOut,
    Overwrite,
    ResumeOpt,
    Seed,
    each_folder,
    echo_json,
    info,
    keep_apart,
    report_each,
    saying_what_was_written,
    where_to_use,
)


def train(
    concepts: Annotated[
        list[str] | None,
        typer.Argument(help='Concepts to forget, e.g. "Elon Musk" or circle.', show_default=False),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Forget a shipped concept list (nsfw); CONCEPTS join its terms, with its anchor."),
    ] = None,
    base: BaseOpt = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Patch file (default: forget-<concepts>.safetensors)."),
    ] = None,
    category: Annotated[
        list[str] | None,
        typer.Option(
            help="identity|object|style|nsfw (or id, obj) per concept (repeat), or one for all [default: the bench's]."
        ),
    ] = None,
    anchor: Annotated[
        str | None,
        typer.Option(
            help="Redirect the concept to this (e.g. \"a man\"); default: the preset's, or the bench's neutral word."
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="Folder of reference images (default: drawn by the base model, cached)."),
    ] = None,
    preserve_file: Annotated[
        Path | None, typer.Option(help="Text file, one prompt per line, whose images must not change.")
    ] = None,
    bench: Annotated[
        str | None,
        typer.Option(
            help="ConceptBench for categories, templates, anchors and preserve set [default: the base's]."
        ),
    ] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = TrainConfig.rank,
    steps: Annotated[
        int | None,
        typer.Option(
            help="Optimisation steps per concept (N concepts train N x steps) [default: what the start needs: 15 "
            "from the closed-form edit (UNet), 150 from zero (SD3/FLUX)].",
            show_default=False,
        ),
    ] = None,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = TrainConfig.lr,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Batch size [default: 4 from the edit (UNet), 8 from zero (SD3/FLUX)].", show_default=False
        ),
    ] = None,
    eta: Annotated[
        float | None,
        typer.Option(help="Negative guidance of the denoising target [default: 1 for styles, 2 otherwise]."),
    ] = None,
    ti: Annotated[
        bool,
        typer.Option(
            "--ti", help="First learn the concept's tokens from its images (FMN stage A); saved beside."
        ),
    ] = False,
    ti_steps: Annotated[int, typer.Option(help="Textual-inversion steps (with --ti).")] = 500,
    init: Annotated[
        str,
        typer.Option(
            help="edit: start from the closed-form edit of the same concepts (hybrid), zero: from zero; auto: "
            "the edit where the base's family offers it (UNet), else zero (SD3/FLUX)."
        ),
    ] = TrainConfig.init,
    robust: Annotated[
        int,
        typer.Option(
            help="Adversarial rounds (0: off): between rounds an inner attack (Concept Inversion) finds a token "
            "that brings the concept back, and the next rounds erase it too. On a UNet base it trains from zero, "
            "300 x 2 split into the rounds, at many times the plain patch's compute (BENCHMARKS.md measures what "
            f"it holds and costs). Try {ROBUST_ROUNDS}. Refused on SD3/FLUX bases: on the toy MMDiT every variant "
            "of the rounds let Concept Inversion back in more often than a plain patch (bench/mmdit_robust.py)."
        ),
    ] = 0,
    robust_attack_steps: Annotated[
        int, typer.Option(help="Steps of each inner attack (with --robust).")
    ] = TrainConfig.robust_attack_steps,
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="More concepts, one per line (# comments).")
    ] = None,
    each: EachOpt = False,
    resume: ResumeOpt = False,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    json_out: JsonOut = False,
) -> None:
    """Train a patch that makes the base model forget CONCEPTS and draw everything else as before.

    LoRA on the text-side keys/values only (UNet: cross-attention to_k/to_v; SD3/3.5 and FLUX.1: the text stream's
    add_k_proj/add_v_proj of each joint block); the re-steering loss moves the pixels' attention off the concept
    (in every text encoder's part of the sequence), a guided denoising term redirects what remains to the anchor
    (in the model's own parametrisation: eps, v or flow), and a preservation term keeps every other prompt's
    keys/values. The family is read from the base's contents. Same inputs and seed give the same patch, bit for
    bit.

    Examples:

      fmnpatch train circle   # a toy-world concept: the bundled toy model

      FMNPATCH_BASE=./sd15 fmnpatch train "Elon Musk"   # the real bench, as the base is not the toy

      fmnpatch train circle bob striped -o forget-3.safetensors --steps 200

      fmnpatch train alice --ti --ti-steps 300   # also writes forget-alice.ti.safetensors

      fmnpatch train circle --robust 4   # adversarial rounds against Concept Inversion

      fmnpatch train "Elon Musk" --category identity --anchor "a man" --base runwayml/stable-diffusion-v1-5

      fmnpatch train --preset nsfw --base ./sd15   # nudity, sexual content -> "fully clothed"

      fmnpatch train --from-file names.txt --each -o patches/   # one patch per line, manifest, --resume

      accelerate launch --num_processes 8 -m fmn_patch train --from-file names.txt --each -o patches/ --device cuda

      fmnpatch train circle --base toy-sd3   # MMDiT: no closed-form start: 150 steps of 8 from zero

      fmnpatch train "Van Gogh" --base ./sd35-medium   # an SD 3.5 or FLUX.1 folder
    """
    concepts = list(concepts or []) + (read_lines(from_file) if from_file is not None else [])
    if resume and not each:
        raise FmnPatchError("--resume continues an --each run; add --each (one patch per concept)")
    if each and (preset is not None or ti):
        raise FmnPatchError(
            f"--each does not combine with {'--preset' if preset is not None else '--ti'}; give the concepts "
            "with --from-file, or drop --each"
        )
    if each and category and len(category) > 1:
        raise FmnPatchError(f"with --each give one --category for every concept, not {len(category)}")
    chosen = chosen_preset(preset, concepts)
    if chosen is not None and category:
        raise FmnPatchError(
            f"--category does not combine with --preset: every concept of preset {chosen.name!r} is "
            f"{chosen.category}; train other concepts into a separate patch and stack the two"
        )
    if not concepts and chosen is None:  # the library says it too; here, before any other check
        raise FmnPatchError("no concept given; name one (fmnpatch train circle) or pass --preset nsfw")
    device = processes.current().device(device)
    if each:
        target = EachConfig(each_folder(output, "patches"), resume=resume, overwrite=overwrite)
    else:
        output = _single_output(output, patch_filename(concepts, chosen), ti, overwrite)
        if category and len(category) not in (1, len(concepts)):
            raise FmnPatchError(
                f"got {len(category)} --category values for {len(concepts)} concepts; give one or one each"
            )
    categories = (category * len(concepts) if len(category) == 1 else category) if category else None
    extra = tuple(read_lines(preserve_file)) if preserve_file is not None else ()
    if images is not None:
        check_input(images, folder=True, what="--images")
    # TrainConfig reads 0 as "the start's budget"; at the command line that is leaving the option out
    for name, given in (("steps", steps), ("batch_size", batch_size)):
        if given is not None:
            values.whole(given, name, 1, MAX_STEPS if name == "steps" else MAX_BATCH, example=8)
    config = TrainConfig(
        rank=rank,
        steps=steps or TrainConfig.steps,
        lr=lr,
        batch_size=batch_size or TrainConfig.batch_size,
        seed=seed,
        anchor=anchor,
        eta=eta,
        preserve_extra=extra,
        init=init,  # type: ignore[arg-type]  # checked by TrainConfig
        bench=bench,
        robust_rounds=robust,
        robust_attack_steps=robust_attack_steps,
    )
    inversion_config = InversionConfig(steps=ti_steps, seed=seed)  # checked even without --ti
    inversion = inversion_config if ti else None
    base = configured_base(base, [chosen.name] if chosen is not None else concepts)
    keep_apart(base, target.folder if each else output)
    if robust:
        refuse_early(base, "robust")  # before minutes of loading a large base
    check_base(base)  # the folder's structure, before any concept (--each) or loading
    wanted = wanted_concepts(concepts, chosen, anchor)
    if chosen is not None:  # the preset's terms carry their own categories
        categories = None
    folder = str(images) if images else None
    if each:
        loaded = functools.cache(lambda: load_base(base, device=device, dtype=dtype))
        options = {**dataclasses.asdict(config), "category": category, "images": folder, "dtype": dtype}
        with saying_what_was_written():
            report = build_each(
                concepts,
                lambda c: train_patch(
                    loaded(), [c], config, categories=category, images=folder, progress=False
                ),
                target,
                recipe=Recipe(config.patch_method(), options, lambda: loaded().describe().hash),
            )
        report_each(report, json_out)  # one patch per concept: each made exactly as `fmnpatch train CONCEPT`
        return
    assert output is not None
    model = load_base(base, device=device, dtype=dtype)
    sibling = output.with_suffix(".ti.safetensors")
    if inversion is not None:
        patch, learned = train_patch_with_inversion(
            model,
            wanted,
            config,
            inversion,
            categories=categories,
            images=folder,
        )
        for tokens in learned:  # stock diffusers: pipe.load_textual_inversion(sibling, token=tokens.token)
            tokens.save(
                sibling if len(learned) == 1 else output.with_suffix(f".{tokens.token[1:-1]}.ti.safetensors"),
                overwrite=overwrite,
            )
    else:
        patch = train_patch(model, wanted, config, categories=categories, images=folder)
    path = patch.save(output, overwrite=overwrite)
    seconds = patch.info.extra["train_seconds"]
    info(
        f"trained {', '.join(patch.concept_names)} in {seconds:.1f}s: {path} ({path.stat().st_size / 1024:.1f} KiB)"
    )
    info(where_to_use(patch, path))
    if json_out:
        echo_json(
            {
                "output": str(path),
                "concepts": [dataclasses.asdict(c) for c in patch.info.concepts],
                "seconds": seconds,
                "final_loss": patch.info.extra["final_loss"],
                "rank": patch.rank,
            }
        )
    else:
        typer.echo(str(path))


def _single_output(output: Path | None, default: str, ti: bool, overwrite: bool) -> Path:
    """The one patch's path (``default`` where none is given), checked before any work."""
    output = output or Path(default)
    check_output(output, overwrite=overwrite, suffixes=(".safetensors",), what="--output")
    if ti:
        check_output(
            output.with_suffix(".ti.safetensors"),
            overwrite=overwrite,
            suffixes=(".safetensors",),
            what="token file",
        )
    return output
