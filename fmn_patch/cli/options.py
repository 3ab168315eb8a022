"""Reusable typed options and the plumbing every command shares (logging quietly, loading patches)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ..concepts.bench import Bench, load_bench
from ..devices import check_device
from ..errors import FmnPatchError, Interrupted
from ..evaluation.judges import Judge, load_judge
from ..families.base import Base, load_base
from ..families.export import use_with
from ..families.registry import named_base
from ..files import check_apart
from ..format.lowrank import MAX_RESIDUAL
from ..format.patch import Patch
from ..hub.refs import is_hub_ref
from ..hub.transfer import resolve
from ..methods.each import MANIFEST, EachReport
from ..methods.request import BASE_ENV
from ..processes import Processes, current
from ..records import to_json
from ..text import printable
from ..values import AUTO, Rank, rank_text, residual

BaseArg = Annotated[
    str, typer.Argument(help="Base model: `toy` (bundled), a local diffusers folder, or a Hub repo id.")
]
PatchesArg = Annotated[list[Path], typer.Argument(help="Patch files (.safetensors).", show_default=False)]
PatchArg = Annotated[Path, typer.Argument(help="A patch file (.safetensors).", show_default=False)]
Weights = Annotated[
    list[float] | None,
    typer.Option(
        "--weight", "-w", help="Weight per patch, in order (repeat the option); one value applies to all."
    ),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout for scripts.")]
Strict = Annotated[
    bool, typer.Option("--strict", help="Refuse a patch made for another base (default: warn and go on).")
]
Device = Annotated[
    str,
    typer.Option(
        help="Torch device, e.g. cpu, cuda, cuda:1, mps.", callback=lambda value: check_device(value)
    ),
]  # checked as it is parsed: before any file is read or any model loads
Dtype = Annotated[str, typer.Option(help="Weights dtype: float32, float16 or bfloat16.")]
Seed = Annotated[int, typer.Option(help="Random seed; the same seed gives the same result.")]
MaxResidual = Annotated[
    float | None,
    typer.Option(
        "--max-residual",
        help=f"With --rank auto: each layer's largest relative residual ||D - B A|| / ||D||, in (0, 1); smaller "
        f"gives higher ranks. [default: {MAX_RESIDUAL}]",
        show_default=False,
    ),
]
BaseOpt = Annotated[
    str | None,
    typer.Option(
        envvar=BASE_ENV,
        help="Base model: `toy`, a local diffusers folder, or a Hub repo id. Set it once with FMNPATCH_BASE "
        "(e.g. `export FMNPATCH_BASE=./sd15`). [default: $FMNPATCH_BASE; without it, the bundled toy model for "
        "toy-world concepts]",
        show_default=False,
    ),
]
# Evaluation options shared by `eval` and `attack`.
BenchOpt = Annotated[
    str | None,
    typer.Option(help="ConceptBench: toy, real or a JSON file [default: the base's world's, else real]."),
]
ClipOpt = Annotated[
    str | None,
    typer.Option(help="CLIP weights (Hub id or path) for the zero-shot judge of real checkpoints."),
]
SeedsOpt = Annotated[int, typer.Option(help="Images per prompt (seeds 0..N-1).")]
StepsOpt = Annotated[int, typer.Option(help="Sampler steps.")]
GuidanceOpt = Annotated[float, typer.Option(help="Guidance scale.")]
# Many patches at once (`train`, `edit`).
EachOpt = Annotated[
    bool,
    typer.Option(
        "--each",
        help="One patch per concept (CONCEPTS and --from-file lines) into the --output folder, with a manifest; "
        "shared between the processes of `accelerate launch`.",
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option("--resume", help="With --each: skip the concepts the folder's manifest records as done."),
]
BatchOpt = Annotated[
    int, typer.Option(help="Images per pipeline call; the same batch size gives the same numbers.")
]


def keep_apart(base: str | None, *outputs: Path | None, what: str = "--output") -> None:
    """Refuse an output that is the base's local folder, a folder above it or a path inside it (a Hub id or a
    base not yet known has none; a folder that is no pipeline is refused by the load, before anything is written)."""
    named = named_base(base) if base is not None else None
    folder = named.locate() if named is not None else Path(base) if base is not None else None
    # os.path: a name too long to be a path is no folder either, without an error here
    if folder is None or not os.path.lexists(os.path.join(folder, "model_index.json")):
        return
    for output in outputs:
        if output is not None:
            check_apart(output, folder, what=what)


def chosen_rank(rank: str, max_residual: float | None) -> tuple[Rank, float]:
    """``--rank`` (digits or auto) and the residual target it goes with: --max-residual only goes with auto."""
    chosen = rank_text(rank)
    if max_residual is not None:
        residual(max_residual, "--max-residual")
    if max_residual is not None and chosen != AUTO:
        raise FmnPatchError(
            f"--max-residual {max_residual:g} only applies to --rank auto; add --rank auto, or drop --max-residual "
            f"to keep rank {chosen}"
        )
    return chosen, MAX_RESIDUAL if max_residual is None else max_residual


def rank_line(patch: Patch) -> str:
    """The patch's rank for a progress line: one number, or the spread of per-module ranks."""
    r = patch.rank_summary()
    return (
        f"rank {r['max']}"
        if r["min"] == r["max"]
        else f"ranks {r['min']}-{r['max']} (median {r['median']:g})"
    )


def where_to_use(patch: Patch, path: Path) -> str:
    """Which file to use where: the native file for diffusers and fmnpatch, its kohya export for the UIs."""
    return f"use {path} with {use_with(patch, path)}"


def quiet_libraries() -> None:
    """Keep stderr for our own progress: silence the libraries' info logs and deprecation chatter."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*peft_config.*multiple adapters.*")
    try:
        from diffusers.utils import logging as dlogging

        dlogging.disable_progress_bar()
        dlogging.set_verbosity_error()
        from transformers.utils import logging as tlogging

        tlogging.set_verbosity_error()
        tlogging.disable_progress_bar()
        from huggingface_hub.utils import logging as hlogging

        hlogging.set_verbosity_error()  # its retry lines on an unreachable network; the error is our one line
    except ImportError:  # pragma: no cover - both are dependencies
        pass


def patch_path(ref: str | Path) -> Path:
    """A local patch file for a local path or a Hub reference (``hf://ORG/NAME[@REVISION][/FILE]``, downloaded)."""
    return Path(resolve(ref)) if is_hub_ref(ref) else Path(ref)


def load_patches(paths: Sequence[str | Path], *, require_hash: bool = False) -> list[Patch]:
    """Load and validate patches from local paths or Hub references (``require_hash``: refuse a file whose header
    carries no tensor hash, as ``--strict`` does)."""
    return [Patch.load(patch_path(p), require_hash=require_hash) for p in paths]


def report_each(report: EachReport, json_out: bool) -> None:
    """Print what ``--each`` made (main process only); fail with exit 2 if any concept failed."""
    if current().is_main:
        info(report.throughput.line(per="h"))
        for entry in report.failed:
            info(f"failed: {entry['concept']}: {entry['error']}")
        if json_out:
            echo_json(report.to_dict())
        else:
            for entry in report.entries:
                if entry["status"] == "done":
                    typer.echo(str(report.folder / entry["output"]))
    if report.failed:
        raise FmnPatchError(
            f"{len(report.failed)} of {len(report.entries)} concepts failed (see {report.folder / MANIFEST}); fix "
            "them and rerun with --resume"
        )


class Stopped(Exception):
    """Ctrl-C in a command that had written part of its outputs, with the line saying which (exit 130). Not a
    KeyboardInterrupt: typer turns those into a bare exit code before ``main`` could print the line."""


@contextlib.contextmanager
def saying_what_was_written() -> Iterator[None]:
    """Turn the library's ``Interrupted`` (what a run wrote before Ctrl-C) into ``Stopped`` for ``main``."""
    try:
        yield
    except Interrupted as e:
        raise Stopped(str(e)) from e


def each_folder(output: Path | None, what: str) -> Path:
    """The folder ``--each`` writes into: ``--output``, else ``fmnpatch-<what>``."""
    return output if output is not None else Path(f"fmnpatch-{what}")


def echo_json(obj: Any) -> None:
    """``obj`` as strict JSON on stdout (a number that is not finite is ``null``)."""
    typer.echo(to_json(obj, default=str))


def info(message: str) -> None:
    """Progress and logs go to stderr; results (paths, JSON) go to stdout. Each line is made terminal-safe: the
    messages repeat what the user typed (a base, a concept), which may hold escape sequences."""
    print("\n".join(printable(line, None) for line in message.split("\n")), file=sys.stderr)


def load_judged(
    base: str, chosen: Bench | None, device: str, dtype: str, clip: str | None
) -> tuple[Base, Bench, Judge, Processes]:
    """The base, the bench (``chosen``, else the base's own) and its judge, in this process and each process
    `accelerate launch` started; the device is this process's share of them."""
    procs = current()
    device = procs.device(device)
    if procs.is_main and procs.count > 1:
        info(f"loading base {base} in each of {procs.count} processes")
    model = load_base(base, device=device, dtype=dtype)
    bench = chosen or load_bench(model.bench)
    return model, bench, load_judge(bench, device, clip=clip), procs
