"""Text made safe for a terminal: strings from files (titles, concept names, paths) are shown, never obeyed.

A patch header is written by whoever made the file. Printed raw, its ESC/OSC sequences would restyle or retitle
the terminal, a ``\\r`` would overwrite the line before it, and bidirectional controls would reorder what is read.
``printable`` escapes every such character the way Python's ``repr`` does and shortens very long strings.
"""

from __future__ import annotations

import re
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


#: A value echoed in a message is shortened past this many characters, to its first ``KEEP`` and a count.
LONG_VALUE: Final = 200
KEEP: Final = 60
_QUOTED = re.compile(r"(?<!\w)(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")(?!\w)")  # a repr, not "base's"
_WORD = re.compile(r"\S+")


def _cut(value: str) -> str:
    quote = value[0] if value[:1] in ("'", '"') and value[-1:] == value[:1] and len(value) > 1 else ""
    body = value[1:-1] if quote else value
    return f"{quote}{body[:KEEP]}...{quote} ({len(body):,} characters)"


def shorten_values(message: str, limit: int) -> str:
    """``message`` with each echoed value longer than ``LONG_VALUE`` characters (a quoted string, else a run
    without spaces) cut to its first ``KEEP``: the sentence around it, the reason and the fix, stays whole. If the
    message is still longer than ``limit``, its middle goes, keeping the start and the end (where the fix is)."""
    if len(message) <= limit:
        return message
    message = _QUOTED.sub(lambda m: _cut(m[0]) if len(m[0]) > LONG_VALUE else m[0], message)
    message = _WORD.sub(lambda m: _cut(m[0]) if len(m[0]) > LONG_VALUE else m[0], message)
    if len(message) <= limit:
        return message
    half = (limit - 5) // 2
    return f"{message[:half]} ... {message[-half:]}"
