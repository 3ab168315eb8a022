"""The progress channel on stderr: a bar per running phase on a terminal, one line per phase elsewhere (a log file,
CI), so that a long phase never looks like a hang. A phase over within ``QUIET_SECONDS`` shows nothing: a command
that fails at once still prints its one error line alone."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

from ..progress import Event, listening
from ..text import printable

#: A phase is shown once it has run this long (a bar) or is announced after it (a line).
QUIET_SECONDS = 1.0


class StderrDisplay:
    """A listener of the progress channel that writes to ``stream`` (stderr): bars when ``bars``, else lines."""

    def __init__(self, stream: TextIO, *, bars: bool) -> None:
        self.stream = stream
        self.bars = bars
        self._open: dict[int, tqdm] = {}  # depth -> the bar of the phase running there
        self._pending: dict[
            int, threading.Timer
        ] = {}  # depth -> the line of the phase begun there, not yet due

    def __call__(self, event: Event) -> None:
        if self.bars:
            self._bar(event)
        elif event.done == 0 and not event.ended:  # a phase begins: its line, unless it is over soon
            self._cancel_from(event.depth)
            size = f" ({event.total} {event.unit})" if event.total else ""
            line = f"fmnpatch: {'  ' * event.depth}{printable(event.phase, 200)}{size} ..."
            timer = threading.Timer(QUIET_SECONDS, lambda: print(line, file=self.stream, flush=True))
            timer.daemon = True
            self._pending[event.depth] = timer
            timer.start()
        elif event.ended:
            self._cancel_from(event.depth)

    def _cancel_from(self, depth: int) -> None:
        for d in [d for d in self._pending if d >= depth]:
            self._pending.pop(d).cancel()

    def _bar(self, event: Event) -> None:
        bar = self._open.get(event.depth)
        if bar is None or (event.done == 0 and not event.ended):  # a phase begins
            self._close_from(event.depth)  # a phase that failed left its bar, and the ones inside it
            bar = self._open[event.depth] = tqdm(
                total=event.total,
                desc=printable(event.phase, 80),
                unit=f" {event.unit}",
                file=self.stream,
                position=event.depth,
                leave=event.depth == 0,
                dynamic_ncols=True,
                delay=QUIET_SECONDS,
            )
        bar.update(event.done - bar.n)
        if event.note:
            bar.set_postfix_str(printable(event.note, 120), refresh=False)
        if event.ended:
            self._close_from(event.depth)

    def _close_from(self, depth: int) -> None:
        for d in sorted((d for d in self._open if d >= depth), reverse=True):
            self._open.pop(d).close()

    def close(self) -> None:
        self._cancel_from(0)
        self._close_from(0)


@contextmanager
def shown_on_stderr(enabled: bool = True) -> Iterator[None]:
    """Show every progress report made inside the block on stderr (``enabled=False``: show nothing, e.g. on the
    processes of `accelerate launch` other than the main one)."""
    if not enabled:
        yield
        return
    display = StderrDisplay(sys.stderr, bars=sys.stderr.isatty())
    try:
        with listening(display):
            yield
    finally:
        display.close()
