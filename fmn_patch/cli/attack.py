"""``fmnpatch attack``: try to get an erased concept back out of a patched model (and the base, the ceiling)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from ..attacks import AttackConfig, InversionAttackConfig, SearchConfig, run_attacks
from ..attacks.config import attack_names as registered_attacks
from ..concepts.bench import load_bench
from ..errors import FmnPatchError
from ..evaluation.mscore import SamplerConfig
from ..families.base import default_bench
from ..files import atomic_files, check_input, check_output
from ..records import to_json
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
    Seed,
    SeedsOpt,
    StepsOpt,
    echo_json,
    info,
    keep_apart,
    load_judged,
    load_patches,
)

OUTPUTS = ("attack.json", "attack.md", "attack.png")


def attack(
    base: BaseArg,
    patches: Annotated[
        list[Path] | None, typer.Argument(help="fmn-patch files to stack on the base (none: the base alone).")
    ] = None,
    concept: Annotated[str, typer.Option(help="The erased concept to get back.", show_default=False)] = "",
    attack_names: Annotated[
        list[str] | None,
        typer.Option(
            "--attack", help=f"Attack to run (repeat): {', '.join(registered_attacks())}; default: all."
        ),
    ] = None,
    lora: Annotated[
        list[Path] | None,
        typer.Option(
            help="Third-party diffusers/kohya LoRA file to stack too (repeat); loaded by diffusers."
        ),
    ] = None,
    bench: BenchOpt = None,
    clip: ClipOpt = None,
    seeds: SeedsOpt = 2,
    steps: StepsOpt = 20,
    guidance: GuidanceOpt = 5.0,
    inversion_steps: Annotated[
        int, typer.Option(help="Concept Inversion: optimisation steps.")
    ] = InversionAttackConfig.steps,
    inversion_images: Annotated[
        int, typer.Option(help="Concept Inversion: pictures of the concept it learns from.")
    ] = InversionAttackConfig.images,
    inversion_tokens: Annotated[
        int, typer.Option(help="Concept Inversion: vectors of the learned token.")
    ] = InversionAttackConfig.num_tokens,
    inversion_lr: Annotated[
        float, typer.Option(help="Concept Inversion: learning rate.")
    ] = InversionAttackConfig.lr,
    search_seconds: Annotated[
        float, typer.Option(help="Prompt search: wall-clock budget in seconds.")
    ] = SearchConfig.seconds,
    search_candidates: Annotated[
        int, typer.Option(help="Prompt search: candidate prompts scored at most.")
    ] = SearchConfig.max_candidates,
    search_length: Annotated[
        int, typer.Option(help="Prompt search: words in the prompt.")
    ] = SearchConfig.length,
    images: Annotated[
        Path | None,
        typer.Option(help="Folder of pictures of the concept (default: drawn by the base before patching)."),
    ] = None,
    no_base: Annotated[
        bool, typer.Option("--no-base", help="Skip attacking the base (the ceiling).")
    ] = False,
    out: Annotated[
        Path, typer.Option("--out", "--output", "-o", help="Folder for attack.json, attack.md, attack.png.")
    ] = Path("fmnpatch-attack"),
    batch_size: BatchOpt = SamplerConfig.batch_size,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    json_out: JsonOut = False,
) -> None:
    """Attack the base with the patches stacked: paraphrases (unseen word orders and aliases), Concept Inversion
    (a new token learned against the patched model from pictures of the concept) and a prompt search over the
    vocabulary. Reports, per attack, the share of images judged to show the concept (attack success) and the
    M-Score, on the patched model and on the base, with the budgets spent.

    Deterministic for a seed, unless the search stops on --search-seconds before --search-candidates. Under
    `accelerate launch` the processes share the work (the learned parts by model and attack, the images by batch).

    Examples:

      fmnpatch attack toy forget-circle.safetensors --concept circle

      fmnpatch attack toy forget-circle.safetensors --concept circle --attack inversion --inversion-steps 400 --json

      fmnpatch attack ./sd15 --lora esd-van-gogh.safetensors --concept "Van Gogh" --clip openai/clip-vit-base-patch32
    """
    if not concept:
        raise FmnPatchError("no concept given; name the erased concept with --concept, e.g. --concept circle")
    config = AttackConfig(
        attacks=tuple(attack_names or registered_attacks()),  # type: ignore[arg-type]  # checked by AttackConfig
        sampler=SamplerConfig(
            steps=steps, guidance=guidance, seeds=SamplerConfig.first_seeds(seeds), batch_size=batch_size
        ),
        inversion=InversionAttackConfig(
            steps=inversion_steps, images=inversion_images, num_tokens=inversion_tokens, lr=inversion_lr
        ),
        search=SearchConfig(seconds=search_seconds, max_candidates=search_candidates, length=search_length),
        attack_base=not no_base,
        images=str(images) if images is not None else None,
        seed=seed,
    )
    early = bench or default_bench(base)  # a bench known before the base loads fails fast
    chosen = load_bench(early) if early is not None else None
    if chosen is not None:
        chosen.concept(concept)
    if images is not None:
        check_input(images, folder=True, what="--images")
    for path in lora or []:
        check_input(path, what="--lora")
    keep_apart(base, out, what="--out")
    check_output(out, overwrite=True, folder=True, what="--out")
    for name in OUTPUTS:
        check_output(out / name, overwrite=overwrite, what="--out")
    loaded = load_patches(patches or [])
    model, the_bench, judge, procs = load_judged(base, chosen, device, dtype, clip)
    report = run_attacks(
        model,
        [*loaded, *(lora or [])],
        the_bench.concept(concept),
        judge,
        the_bench,
        config,
        patch_names=[str(p) for p in [*(patches or []), *(lora or [])]],
    )
    if not procs.is_main:  # every process has the whole report; the main one writes and prints it
        return
    data = report.to_dict()
    writers: dict[str, Callable[[Path], object]] = {  # one set: all three files, or none
        OUTPUTS[0]: lambda t: t.write_text(to_json(data) + "\n", encoding="utf-8"),
        OUTPUTS[1]: lambda t: t.write_text(report.to_markdown(), encoding="utf-8"),
    }
    if report.grid is not None:
        grid = report.grid
        writers[OUTPUTS[2]] = lambda t: grid.save(t, format="PNG")
    atomic_files(out, writers, overwrite=overwrite)
    info(report.to_markdown())
    if json_out:
        echo_json(data)
    else:
        for name in OUTPUTS:
            typer.echo(str(out / name))
