"""The ``fmnpatch`` root: wires the commands and turns user errors into one line and exit code 2."""

from __future__ import annotations

import os
import sys

import click
import typer

from ..errors import FmnPatchError
from . import apply, attack, correct, edit, eval, export, inspect, merge, pull, push, search, train
from .options import quiet_libraries
from .planned import PLANNED, planned_command

app = typer.Typer(
    name="fmnpatch",
    help=(
        "Make text-to-image diffusion models forget: small LoRA patches on the text-side keys/values of\n"
        "cross-attention (SD 1.x/2.x/XL UNets) or of joint attention (SD 3/3.5, FLUX.1).\n\n"
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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes print one line to stderr and exit 2; Ctrl-C exits 130."""
    _debug[0] = False
    try:
        app(args=argv, prog_name="fmnpatch", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("fmnpatch: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    except FmnPatchError as e:
        if _debug[0] or os.environ.get("FMNPATCH_DEBUG"):
            raise
        print(f"fmnpatch: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
