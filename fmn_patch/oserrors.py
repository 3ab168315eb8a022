"""OS errors in words: the cause of a failed file operation, what to do about it, and the OS error behind an
exception, also where a library that does its own I/O names it only in its message."""

from __future__ import annotations

import errno
import os
import re
from typing import Final

from .errors import FmnPatchError

#: What to do about the causes a write meets most, after the cause itself ("no space left on device; ...").
_FIXES: Final = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EFBIG: "raise the file-size limit (`ulimit -f`) or write elsewhere",
    errno.EROFS: "write to a writable folder",
    errno.EACCES: "write to a folder you may write to",
    errno.EPERM: "write to a folder you may write to",
}
#: How a library that does its own I/O outside Python names the OS error (safetensors' Rust writer:
#: ``SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')``).
_OS_ERROR_TEXT: Final = re.compile(r"\(os error (\d+)\)")


def describe_os_error(e: OSError) -> str:
    """The cause of a failed file operation in words: ``read-only file system``, ``no space left on device``."""
    if e.errno == errno.ENAMETOOLONG:
        return "the file name is too long for the file system; choose a shorter name"
    return (e.strerror or str(e)).lower()


def write_fix(e: OSError) -> str:
    """What to do about a failed write, for the usual causes ("" for the others)."""
    return _FIXES.get(e.errno, "") if e.errno is not None else ""


def os_error_in(e: BaseException) -> OSError | None:
    """The OS error behind ``e``: ``e`` itself, one it was raised from, or one a library names only in its message
    (``(os error 28)``); None if there is none."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            return current
        if not isinstance(current, FmnPatchError) and (m := _OS_ERROR_TEXT.search(str(current))):
            code = int(m[1])
            return OSError(code, os.strerror(code))
        current = current.__cause__ or current.__context__
    return None
