"""Ctrl-C while ``fmnpatch`` starts. Its first seconds go to importing torch, diffusers and transformers, before
``cli.app.main`` can turn a KeyboardInterrupt into its one line and exit 130: a press then printed a traceback.
``guard`` (the package's ``__init__`` runs it first, for the CLI only) makes such a press exit 130 with one line;
``release`` (``main``, once it can catch it) gives Ctrl-C back to Python. Nothing is written before ``main`` runs."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

MESSAGE = b"fmnpatch: interrupted while starting; nothing was written\n"
#: What ``sys.argv[0]`` is while the CLI imports the package: the console script, or ``python -m fmn_patch``
#: (Python sets ``-m`` there while it locates the module).
CLI_NAMES = ("fmnpatch", "fmnpatch.exe", "-m")


def _exit(signum: int, frame: FrameType | None) -> None:
    os.write(2, MESSAGE)
    os._exit(130)


def guard() -> None:
    """While the CLI starts, Ctrl-C exits 130 with one line. Only where Python's own handler is in place: a process
    that ignores SIGINT (started in the background) keeps ignoring it."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    on_main = threading.current_thread() is threading.main_thread()
    if name in CLI_NAMES and on_main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit)


def release() -> None:
    """Ctrl-C raises KeyboardInterrupt again (where ``guard`` took it)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _exit:
        signal.signal(signal.SIGINT, signal.default_int_handler)
