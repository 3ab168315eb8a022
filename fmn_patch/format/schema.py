"""The header schema: the type of every field a patch header may carry, checked once on load.

A header is whatever its writer put there. ``info_from_header`` either returns a ``PatchInfo`` whose every field has
the type the rest of the package relies on, or raises ``PatchFileError`` naming the field: values must be strings;
``fmn_patch.concepts`` a JSON list of ``{"name": text, "category": one of the categories}``; ``parents`` a list of
objects; ``config``, ``results``, ``extra`` JSON objects; ``versions`` an object of strings; ``format_version`` and
``rank`` ASCII digits. JSON is read with a nesting limit, so a hostile header cannot exhaust the stack later.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from ..errors import FmnPatchError, PatchFileError
from .header import FORMAT_VERSION, NAMESPACE, PatchConcept, PatchInfo

MAX_DEPTH: Final = 32  # nesting of JSON values in a header field
_DIGITS = re.compile(r"[0-9]{1,9}")
_PARENT_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "title": (str,),
    "hash": (str,),
    "method": (str,),
    "weight": (int, float),
    "rank": (int,),
    "concepts": (list,),
}


def check_strings(header: Mapping[Any, Any]) -> dict[str, str]:
    """The header as str -> str; anything else is refused."""
    bad = next(((k, v) for k, v in header.items() if not isinstance(k, str) or not isinstance(v, str)), None)
    if bad is not None:
        raise PatchFileError(f"header field {str(bad[0])[:60]!r} is not text; header values must be strings")
    return dict(header)


def load_json(header: Mapping[str, str], key: str, kind: type, default: Any) -> Any:
    """The JSON value of ``key`` (``default`` when absent or empty), which must be a ``kind``."""
    raw = header.get(key, "")
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, or a number too long to convert
        raise PatchFileError(f"header field {key} is not valid JSON ({str(e)[:80]})") from e
    if not isinstance(value, kind):
        raise PatchFileError(
            f"header field {key} must be a JSON {_kind_name(kind)}, got {type(value).__name__}"
        )
    if _depth(value) > MAX_DEPTH:
        raise PatchFileError(f"header field {key} nests deeper than {MAX_DEPTH} levels")
    return value


def format_version(header: Mapping[str, str]) -> int | None:
    """The ``fmn_patch.format_version`` (None when absent); ASCII digits only."""
    raw = header.get(f"{NAMESPACE}.format_version")
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw):
        raise PatchFileError(
            f"patch format version {raw[:20]!r} is unknown to this fmn-patch (reads up to {FORMAT_VERSION}); "
            "upgrade with `pip install -U fmn-patch`"
        )
    return int(raw)


def info_from_header(header: Mapping[str, str]) -> PatchInfo:
    """Typed metadata from a header, every field checked (``PatchFileError`` names the first bad one)."""
    header = check_strings(header)

    def get(key: str) -> str:
        return header.get(f"{NAMESPACE}.{key}", "")

    def field(key: str, kind: type, default: Any) -> Any:
        return load_json(header, f"{NAMESPACE}.{key}", kind, default)

    architecture = header.get("modelspec.architecture", "stable-diffusion-v1/lora").removesuffix("/lora")
    version = format_version(header)
    if get("rank") and not _DIGITS.fullmatch(get("rank")):
        raise PatchFileError(
            f"header field {NAMESPACE}.rank must be a whole number, got {get('rank')[:20]!r}"
        )
    _check(field("versions", dict, {}), "versions", _all_strings)
    _check(field("target_modules", list, []), "target_modules", lambda v: all(isinstance(x, str) for x in v))
    _check(field("ranks", dict, {}), "ranks", lambda v: all(_whole(x) for x in v.values()))
    if "lora_adapter_metadata" in header:
        load_json(header, "lora_adapter_metadata", dict, {})
    parents = field("parents", list, [])
    _check(parents, "parents", lambda v: all(_parent(p) for p in v))
    return PatchInfo(
        method=get("method") or "manual",
        concepts=_concepts(field("concepts", list, [])),
        base_model=get("base_model") or None,
        base_revision=get("base_revision") or None,
        base_hash=get("base_hash") or None,
        encoder_hash=get("encoder_hash") or None,
        architecture=architecture,
        title=header.get("modelspec.title", ""),
        description=header.get("modelspec.description", ""),
        author=header.get("modelspec.author", ""),
        license=header.get("modelspec.license", ""),
        date=header.get("modelspec.date", ""),
        config=field("config", dict, {}),
        parents=tuple(parents),
        results=field("results", dict, {}),
        extra=field("extra", dict, {}),
        versions=field("versions", dict, {}),
        format_version=FORMAT_VERSION if version is None else version,
    )


def _concepts(items: list[Any]) -> tuple[PatchConcept, ...]:
    concepts = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise PatchFileError(
                f"header field {NAMESPACE}.concepts must list objects with a text name, got {str(item)[:60]!r}"
            )
        category = item.get("category", "other")
        if not isinstance(category, str):
            raise PatchFileError(f"header field {NAMESPACE}.concepts: category {category!r} is not text")
        try:
            concepts.append(PatchConcept(item["name"], category))  # type: ignore[arg-type]  # checked here
        except FmnPatchError as e:
            raise PatchFileError(f"header field {NAMESPACE}.concepts: {e}") from e
    return tuple(concepts)


def _parent(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    for key, kinds in _PARENT_FIELDS.items():
        value = item.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            return False
    return all(isinstance(c, str) for c in item.get("concepts") or [])


def _check(value: Any, key: str, ok: Callable[[Any], bool]) -> None:
    if not ok(value):
        raise PatchFileError(f"header field {NAMESPACE}.{key} has entries of the wrong type")


def _all_strings(value: dict[str, Any]) -> bool:
    return all(isinstance(v, str) for v in value.values())


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _kind_name(kind: type) -> str:
    return "object" if kind is dict else "list" if kind is list else kind.__name__


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest
