"""Text made safe for a terminal: strings from files (titles, concept names, paths) are shown, never obeyed.

A patch header is written by whoever made the file. Printed raw, its ESC/OSC sequences would restyle or retitle
the terminal, a ``\\r`` would overwrite the line before it, and bidirectional controls would reorder what is read.
``printable`` escapes every such character the way Python's ``repr`` does and shortens very long strings.
"""

from __future__ import annotations

import unicodedata
from typing import Final

LIMIT: Final = 200  # characters shown of one header string; the rest is counted
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(ch: str) -> bool:
    # Cc: C0/C1 controls and DEL; Cf: format controls (bidi overrides, zero-width); Zl/Zp: line/paragraph separators
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")


def escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, limit: int | None = LIMIT) -> str:
    """``text`` with control, format and separator characters escaped (``\\x1b``, ``\\r``, ``\\u202e``) and, past
    ``limit`` characters, cut with a count of what was left out."""
    s = str(text)
    extra = 0
    if limit is not None and len(s) > limit:
        s, extra = s[:limit], len(s) - limit
    out = "".join(escape(ch) if _unsafe(ch) else ch for ch in s)
    return out + (f"... ({extra:,} more characters)" if extra else "")


def is_printable(text: str) -> bool:
    """Whether ``text`` has no character ``printable`` would escape (and is one line)."""
    return not any(_unsafe(ch) for ch in text)
