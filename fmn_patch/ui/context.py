"""What every tab shares: the page's config, the visitors' folders and flags, the loaded base, and the few checks
every handler makes on what a visitor sends (numbers, bases, uploads)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from .. import FmnPatchError, Patch, PatchFileError, listening, refuse_local
from .bases import LoadedBase
from .config import PageConfig
from .feedback import PageProgress
from .session import Sessions


@dataclass
class PageContext:
    """The page's shared parts, handed to each tab's builder."""

    config: PageConfig
    sessions: Sessions
    bases: LoadedBase

    @contextmanager
    def job(self, request: gr.Request | None, bar: gr.Progress) -> Iterator[None]:
        """A job for the visitor: its progress on their bar, stopped at the next report once they press Cancel."""
        flag = self.sessions.flag(request)
        flag.clear()
        with listening(PageProgress(bar, flag)):
            yield

    def base(self, text: str | None) -> str:
        """The base a visitor typed: ``toy`` when empty; a local folder only where the page reads them."""
        ref = (text or "").strip() or "toy"
        if not self.config.local_paths:
            refuse_local(ref)
        return ref

    def upload(self, file: str | Path | None, what: str = "patch") -> tuple[Patch, Path]:
        """A patch a visitor uploaded: refused over the size cap before it is read, then read with safetensors."""
        if file is None:
            raise FmnPatchError(f"no {what} uploaded; drop a .safetensors patch file here")
        path = Path(file)
        size = path.stat().st_size
        if size > self.config.max_upload_bytes:
            raise PatchFileError(
                f"{path.name} is {size / 2**20:.0f} MiB, over this page's {self.config.max_upload_mb} MiB limit; "
                "start the page with a larger --max-upload-mb"
            )
        try:
            return Patch.load(path), path
        except (
            PatchFileError
        ) as e:  # named by its file name: the server's folders are not the visitor's business
            raise PatchFileError(str(e).replace(str(path), path.name)) from None


def count(value: float | None, name: str, *, low: int = 0) -> int | None:
    """A whole number from a number field (None: left empty)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)
    if not math.isfinite(number) or number != int(number) or number < low:
        raise FmnPatchError(f"{name} {value!r} is not a whole number of at least {low}; e.g. {max(low, 1)}")
    return int(number)
