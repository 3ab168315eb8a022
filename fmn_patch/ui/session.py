"""Each visitor's share of the server: a private temporary folder (every file the page offers for download is
written there, under a sanitised name, and nowhere else) and a Cancel flag for the job running for them."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from pathlib import Path

import gradio as gr


class Sessions:
    """The folders and Cancel flags of the page's visitors, under one temporary root removed on ``close``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fmnpatch-ui-"))
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def key(self, request: gr.Request | None) -> str:
        """A file-name-safe key for the visitor: the session id comes from the browser, so it is hashed."""
        session = (request.session_hash if request is not None else None) or "anonymous"
        return hashlib.sha256(session.encode()).hexdigest()[:16]

    def folder(self, request: gr.Request | None) -> Path:
        """The visitor's own folder (made on first use, readable by this user only)."""
        folder = self.root / self.key(request)
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def flag(self, request: gr.Request | None) -> threading.Event:
        """The visitor's Cancel flag, set by the Cancel button, cleared when a job starts."""
        with self._lock:
            return self._flags.setdefault(self.key(request), threading.Event())

    def end(self, request: gr.Request | None) -> None:
        """The visitor left: their folder and flag go."""
        key = self.key(request)
        with self._lock:
            self._flags.pop(key, None)
        shutil.rmtree(self.root / key, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
