"""The ``fmnpatch`` root: wires the commands and turns user errors into one line and exit code 2."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import warnings
from typing import Any, NoReturn

import typer

from ..errors import FmnPatchError
from ..files import describe_os_error
from ..processes import current, joined
from ..startup import release
from ..text import printable, shorten_values
from . import apply, attack, correct, edit, evaluate, export, inspect, merge, pull, push, search, train, ui
from .display import shown_on_stderr
from .options import Stopped, quiet_libraries

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
app.command("eval")(evaluate.eval_command)
app.command()(attack.attack)
app.command()(push.push)
app.command()(pull.pull)
app.command()(search.search)
app.command()(ui.ui)


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
    """Console entry point. User mistakes print one line to stderr and exit 2 (a usage error prints the usage line
    first); Ctrl-C exits 130; SIGTERM (a launcher stopping its processes, a preempted job) exits 143. Neither
    leaves a partial file. Text from files is escaped before it reaches the terminal."""
    release()  # from here Ctrl-C is a KeyboardInterrupt this function turns into exit 130
    _debug[0] = False
    stopped = "interrupted; nothing was written"  # what Ctrl-C says, unless the run says what it wrote
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        _fail(
            "no command given; run `fmnpatch --help` to see the commands",
            usage="fmnpatch [OPTIONS] COMMAND ...",
        )
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    file_size_signal: Any = signal.SIG_DFL
    if main_thread and hasattr(signal, "SIGXFSZ"):  # past `ulimit -f` a write fails with EFBIG, not a kill
        file_size_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            with shown_on_stderr(current().is_main):  # the library's progress channel
                code = app(args=args, prog_name="fmnpatch", standalone_mode=False)
        except typer.Abort:
            code = 130
        except KeyboardInterrupt:
            code = 130
        except Stopped as e:
            code, stopped = 130, str(e)
        except (
            typer.TyperException
        ) as e:  # typer's usage errors: bad values, unknown options, missing arguments
            if _debugging():
                raise
            ctx = getattr(e, "ctx", None)
            _fail(
                _usage_message(e),
                usage=ctx.get_usage().removeprefix("Usage: ") if ctx is not None else None,
                code=getattr(e, "exit_code", 2) or 2,
            )
        except FmnPatchError as e:
            if _debugging():
                raise
            _fail(str(e))
        except OSError as e:  # the environment, not the user's input: a full disk, a read-only mount, /proc
            if _debugging():
                raise
            where = f" ({e.filename})" if e.filename else ""
            _fail(f"{describe_os_error(e)}{where}")
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
                if hasattr(signal, "SIGXFSZ"):
                    signal.signal(signal.SIGXFSZ, file_size_signal)
    if code == 130:
        _say(f"fmnpatch: {printable(stopped, 2000)}")
    sys.exit(code if isinstance(code, int) else 0)


def _say(line: str) -> None:
    """One line on stderr; a stderr that cannot be written (``2>/dev/full``, a closed pipe) does not change the
    exit code: the line is dropped, and so is what is left in the stream's buffer."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - stays open for Python's own last flush


def _debugging() -> bool:
    return _debug[0] or bool(os.environ.get("FMNPATCH_DEBUG"))


def _fail(message: str, *, usage: str | None = None, code: int = 2) -> NoReturn:
    if usage is not None:
        _say(f"usage: {printable(usage, 300)}")
    procs = joined()  # under `accelerate launch`: which process says it
    who = "" if procs is None or procs.is_main else f" (process {procs.index})"
    _say(f"fmnpatch: error{who}: {shorten_values(printable(message, None), 2000)}")
    sys.exit(code)


def _usage_message(e: Exception) -> str:
    """typer's message for a usage error, with the value that was refused when typer knows it."""
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    errors = getattr(e.__cause__, "errors", None)  # pydantic's ValidationError, from typer's coercion
    if callable(errors):
        try:
            value = errors()[0].get("input")
        except (IndexError, AttributeError, TypeError):
            value = None
        if isinstance(value, str):
            message = message.replace(": ", f": {value[:60]!r}: ", 1)
    return " ".join(message.split())


def _show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    _say(f"fmnpatch: warning: {shorten_values(printable(message, None), 1000)}")


if __name__ == "__main__":
    main()
