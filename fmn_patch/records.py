"""JSON records that are always valid JSON: a number that is not finite (NaN, an infinity) is written as ``null``.

Python's ``json.dumps`` writes a NaN as a bare ``NaN``, which no strict JSON reader (``jq``, JavaScript's
``JSON.parse``, Go) accepts; a score computed on a broken model is such a NaN. ``to_json`` maps each one to ``null``,
and a record that is a dict says which values were mapped under ``NOT_FINITE``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

#: The key a record gets when some of its numbers were not finite: the paths of those values (``models.1.acc``).
NOT_FINITE: Final = "not_finite"


def finite(obj: Any, path: str = "", found: list[str] | None = None) -> Any:
    """``obj`` with every float that is not finite replaced by None; the dotted paths of those go to ``found``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        if found is not None:
            found.append(path or "(the value)")
        return None
    if isinstance(obj, dict):
        return {k: finite(v, f"{path}.{k}" if path else str(k), found) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v, f"{path}.{i}" if path else str(i), found) for i, v in enumerate(obj)]
    return obj


def to_json(obj: Any, *, indent: int | None = 2, default: Any = None) -> str:
    """``obj`` as strict JSON: values that are not finite become ``null``, listed under ``NOT_FINITE`` (a dict)."""
    found: list[str] = []
    clean = finite(obj, found=found)
    if found and isinstance(clean, dict):
        clean = {**clean, NOT_FINITE: found}
    return json.dumps(clean, indent=indent, allow_nan=False, default=default)
