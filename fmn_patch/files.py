"""Files: atomic writes that never leave a partial output, whole-line appends to logs that several processes
share, and the one reader of line-per-entry text files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import FmnPatchError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_APPEND alone
    fcntl = None  # type: ignore[assignment]


def atomic_write(path: Path, write: Callable[[Path], Any], *, overwrite: bool) -> Path:
    """Run ``write(tmp_path)`` on a temp file beside ``path``, then rename it into place.

    An exception or Ctrl-C leaves no partial file; an existing ``path`` is kept unless ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FmnPatchError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    if path.exists() and path.is_dir():
        raise FmnPatchError(
            f"{path} is a directory; give a file path ending in {path.suffix or '.safetensors'}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` (created if missing) in one write, under an exclusive lock, and
    flush it to disk: processes appending to the same log never interleave their lines. A line is half there only
    if the machine dies inside the one write; the next append starts on a new line, and readers skip the torn one."""
    if "\n" in line:
        raise ValueError("append_line writes one line; the text holds a newline")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line: do not glue this one to it
            data = b"\n" + data
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The entries of a text file, one per line: ``#`` starts a comment, blank lines are skipped, ends stripped.

    Every list file (``--preserve-file``, ``--from-file``) is read by this one function.
    """
    path = Path(path)
    if not path.is_file():
        raise FmnPatchError(f"{path} is not a file; give a text file with one entry per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FmnPatchError(
            f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
        ) from e
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]
