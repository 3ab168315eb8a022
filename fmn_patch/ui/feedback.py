"""What the visitor sees of a job: the library's progress events on the page's bar, and every refusal as one
escaped line (never a traceback: that goes to the server's log, for unexpected failures only)."""

from __future__ import annotations

import functools
import html
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from .. import Cancelled, Event, FmnPatchError, printable

F = TypeVar("F", bound=Callable[..., Any])
#: Progress updates sent to the browser at most this often (the toy model's steps take milliseconds).
UPDATE_SECONDS = 0.1


def one_line(error: BaseException) -> str:
    """The error as the visitor reads it: its first line, terminal escapes shown as text, HTML escaped (Gradio
    renders an error's message as HTML)."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return html.escape(printable(lines[0], 500), quote=False)


def shown(handler: F) -> F:
    """``handler`` with its refusals raised as ``gr.Error`` (a one-line message in the page): the library's
    errors, an environment's OSError; anything else is a bug, logged on the server with its traceback."""

    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (FmnPatchError, OSError, ValueError) as e:
            raise gr.Error(one_line(e), duration=None, print_exception=False) from None
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(
                f"internal error ({type(e).__name__}); the server's log has the details",
                print_exception=False,
            ) from None

    return run  # type: ignore[return-value]


class PageProgress:
    """A listener of the progress channel that moves the page's bar, and stops the job once Cancel is pressed."""

    def __init__(self, bar: gr.Progress, cancel: threading.Event) -> None:
        self.bar = bar
        self.cancel = cancel
        self._sent = 0.0

    def __call__(self, event: Event) -> None:
        if self.cancel.is_set():
            raise Cancelled()
        now = time.monotonic()
        if now - self._sent < UPDATE_SECONDS and event.done and not event.ended:
            return
        self._sent = now
        desc = printable(event.line(), 200)
        if event.total:
            self.bar((min(event.done, event.total), event.total), desc=desc, unit=event.unit)
        else:
            self.bar((event.done, None), desc=desc, unit=event.unit)
