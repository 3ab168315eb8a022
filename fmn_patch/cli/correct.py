"""``fmnpatch correct``: remove an unwanted association from a concept while keeping the concept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import FmnPatchError
from ..families.base import load_base
from ..files import check_output, slug
from ..methods.correct import DEFAULT_TEMPLATES, CorrectConfig, attribute_variants, correct_patch
from ..methods.request import configured_base
from .options import (
    BaseOpt,
    Device,
    Dtype,
    JsonOut,
    Overwrite,
    echo_json,
    info,
    keep_apart,
    where_to_use,
)

_DEFAULT = CorrectConfig()


def correct(
    concept: Annotated[str, typer.Argument(help="The concept whose association to remove, e.g. circle.")],
    into: Annotated[
        list[str] | None,
        typer.Option(
            "--into", help="A variant the concept should draw equally often (repeat it), e.g. 'red circle'."
        ),
    ] = None,
    attribute: Annotated[
        str | None,
        typer.Option(help="Variants from a ConceptBench attribute: every value + the concept (toy: colour)."),
    ] = None,
    template: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Prompt naming the concept, '{{}}' for it (repeat it) [default: {', '.join(DEFAULT_TEMPLATES)}]"
        ),
    ] = None,
    base: BaseOpt = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The patch (.safetensors); default correct-CONCEPT.safetensors."),
    ] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank of the patch.")] = _DEFAULT.rank,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = _DEFAULT.steps,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = _DEFAULT.lr,
    seed: Annotated[int, typer.Option(help="Seed: same inputs and seed give the same patch.")] = 0,
    bench: Annotated[
        str | None,
        typer.Option(
            help="ConceptBench for attributes and the preserve set: toy, real or a JSON path [default: the base's]."
        ),
    ] = None,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Concept correction: make a concept draw each of its variants equally often, keep everything else.

    Distils, for prompts naming the concept, the base model's own predictions for each variant, while keeping the
    keys/values of the variants' prompts and every other prompt. The toy model's "circle" is red almost always
    when no colour is asked (its captions made an uncoloured circle red 90% of the time); after `fmnpatch correct
    circle --attribute colour` it comes in every colour, and "a red circle" is still red.

    Examples:

      fmnpatch correct circle --attribute colour

      fmnpatch correct "doctor" --into "male doctor" --into "female doctor" --template "a photo of a {}" --base ./sd15
    """
    if (into is None) == (attribute is None):
        raise FmnPatchError(
            "give the variants either with --into (repeat it) or with --attribute, e.g. --attribute colour"
        )
    output = output or Path(f"correct-{slug(concept) or 'concept'}.safetensors")
    check_output(output, overwrite=overwrite, suffixes=(".safetensors",), what="--output")
    templates = tuple(template) if template else DEFAULT_TEMPLATES
    config = CorrectConfig(rank=rank, steps=steps, lr=lr, seed=seed, templates=templates, bench=bench)
    base = configured_base(base, [concept])
    keep_apart(base, output)
    model = load_base(base, device=device, dtype=dtype)
    variants = list(into) if into else attribute_variants(concept, str(attribute), bench or model.bench)
    patch = correct_patch(model, concept, variants, config)
    path = patch.save(output, overwrite=overwrite)
    seconds = patch.info.extra["train_seconds"]
    info(f"corrected {concept!r} toward {len(variants)} variants in {seconds:.1f} s")
    info(where_to_use(patch, path))
    if json_out:
        echo_json({"output": str(path), "concept": concept, "variants": variants, "seconds": seconds})
    else:
        typer.echo(str(path))
