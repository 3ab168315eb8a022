"""The ``fmnpatch`` root: wires the commands and turns user errors into one line and exit code 2."""

from __future__ import annotations

import os
import signal
import sys
import threading

import click
import typer

from ..errors import FmnPatchError
from . import apply, attack, correct, edit, eval, export, inspect, merge, pull, push, search, train
from .options import quiet_libraries
from .planned import PLANNED, planned_command

app = typer.Typer(
    name="fmnpatch",
    help=(
        "Make text-to-image diffusion models forget: small LoRA patches on UNet cross-attention keys/values.\n\n"
        "Patches are .safetensors files that stock diffusers loads; stack, merge, fuse and export them here."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(apply.apply)
app.command()(merge.merge)
app.command()(export.export)
app.command()(inspect.inspect)
app.command()(edit.edit)
app.command()(train.train)
app.command()(correct.correct)
app.command("eval")(eval.eval_command)
app.command()(attack.attack)
app.command()(push.push)
app.command()(pull.pull)
app.command()(search.search)
for _name, _what in PLANNED.items():
    app.command(_name)(planned_command(_name, _what))


_debug = [False]  # set by --debug for this invocation


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (or set FMNPATCH_DEBUG=1)."),
) -> None:
    _debug[0] = debug
    quiet_libraries()


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(143)  # unwinds like Ctrl-C: atomic writes remove their temp files


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes print one line to stderr and exit 2; Ctrl-C exits 130; SIGTERM (a
    launcher stopping its processes, a preempted job) exits 143. Neither leaves a partial file."""
    _debug[0] = False
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        app(args=argv, prog_name="fmnpatch", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("fmnpatch: interrupted; no partial file was left", file=sys.stderr)
        sys.exit(130)
    except FmnPatchError as e:
        if _debug[0] or os.environ.get("FMNPATCH_DEBUG"):
            raise
        rank = os.environ.get("RANK", "0")  # under `accelerate launch`: which process says it
        print(f"fmnpatch: error{'' if rank == '0' else f' (process {rank})'}: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    sys.exit(0)


if __name__ == "__main__":
    main()
