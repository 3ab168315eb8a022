"""The one progress channel: every phase of a job that can take more than a second (loading a base, drawing reference
images, the target pool, training steps, robust rounds and their attacks, evaluation sampling, Hub transfers)
reports here, and whoever listens shows it: the CLI's stderr display, the web page's bar.

A phase is a context manager that counts its units::

    with phase("training", total=steps, unit="steps") as p:
        for _ in range(steps):
            ...
            p.advance(note=f"loss {loss:.4f}")

Nothing listens by default, and then a report costs a function call. Listeners are per context (``contextvars``):
the page's jobs, each in its own worker thread, see only their own events.

Every report is also where a job may stop: whatever a listener raises (``Cancelled`` from the page's Cancel button)
comes out of the library call there, before anything is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

from .errors import FmnPatchError


@dataclass(frozen=True)
class Event:
    """One report: where a phase stands."""

    phase: str  # what is happening, in the user's words: "drawing reference images"
    done: int  # units finished so far in this phase
    total: int | None  # units the phase has; None where that is not known (loading a base)
    unit: str  # what a unit is: "steps", "images", "rounds", "files"
    depth: int = 0  # 0: a job's own phase; 1: a phase inside it (a robust round's training steps); ...
    ended: bool = False  # the phase's last report
    note: str = ""  # the latest detail, e.g. "loss 0.0123"
    seconds: float = 0.0  # since the phase began

    @property
    def fraction(self) -> float | None:
        """How much of the phase is done, in [0, 1]; None where the total is not known."""
        if self.ended:
            return 1.0
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    def line(self) -> str:
        """The event as one line of text: ``training: 12/15 steps (loss 0.0123)``."""
        parts = [f"{self.done}/{self.total} {self.unit}" if self.total else ""]
        parts.append(f"({self.note})" if self.note else "")
        parts.append(f"done in {self.seconds:.1f}s" if self.ended else "")
        shown = " ".join(p for p in parts if p)
        return f"{self.phase}: {shown}" if shown else self.phase


Listener = Callable[[Event], None]


class Cancelled(FmnPatchError):
    """Raised by a listener to stop the job at its next report; the job writes nothing."""

    def __init__(self, message: str = "cancelled; nothing was written") -> None:
        super().__init__(message)


_listeners: ContextVar[tuple[Listener, ...]] = ContextVar("fmn_patch_progress_listeners", default=())
_depth: ContextVar[int] = ContextVar("fmn_patch_progress_depth", default=0)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every report made in this context (this thread, this task) to ``listener`` too, until the block ends."""
    token = _listeners.set((*_listeners.get(), listener))
    try:
        yield
    finally:
        _listeners.reset(token)


def listened() -> bool:
    """Whether anyone listens here: work done only to be reported (a per-step callback) is skipped otherwise."""
    return bool(_listeners.get())


class Phase:
    """A running phase: ``advance`` counts units done and reports them."""

    def __init__(self, name: str, total: int | None, unit: str, depth: int) -> None:
        self._event = Event(name, 0, total, unit, depth)
        self._start = time.perf_counter()

    @property
    def done(self) -> int:
        return self._event.done

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """``n`` more units done; ``note`` replaces the detail shown with the count."""
        self._emit(done=self._event.done + n, note=self._event.note if note is None else note)

    def _emit(self, **changes: object) -> None:
        self._event = replace(self._event, seconds=time.perf_counter() - self._start, **changes)  # type: ignore[arg-type]
        for listener in _listeners.get():
            listener(self._event)


@contextmanager
def phase(name: str, total: int | None = None, unit: str = "steps") -> Iterator[Phase]:
    """Report a phase named ``name`` of ``total`` units: once as it begins, at each ``advance``, and once as it
    ends (not when it fails: the error says what happened). Phases nest: one opened inside another is one deeper."""
    depth = _depth.get()
    current = Phase(name, total, unit, depth)
    token = _depth.set(depth + 1)
    try:
        current._emit()
        yield current
        current._emit(ended=True)
    finally:
        _depth.reset(token)
