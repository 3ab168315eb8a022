"""The manifest of an ``--each`` run: read strictly, and on resume taken as a record to check, not a promise.

``manifest.jsonl`` in the output folder has one JSON object per line (see ``fmn_patch.methods.each``). A ``done``
line records what its patch is: the header's concepts, method, base hash, a digest of its config, the tensors' hash,
and the options of the run that made it (``Recipe``). On resume a done line counts only if the file it names is
``patch_name(concept)`` in the folder itself (no other path is ever opened), loads as a patch, and its header and
tensors are the ones the line records; any other done line is made again, with one line on stderr saying why.

Refused in one line, before anything is made or changed: a manifest that is not a regular file, not UTF-8, or has a
line of the wrong JSON types (what a hand edit or another program leaves); and a manifest whose patches were made
on another base, by another method or with other options than the run resuming it. A line cut short by a crash
(invalid JSON, or UTF-8 cut at its end) is skipped, with a line on stderr.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..errors import FmnPatchError, PatchFileError
from ..format.patch import Patch
from ..text import printable

MANIFEST: Final = "manifest.jsonl"
DONE, FAILED = "done", "failed"
#: What a done line records of its patch, and the JSON type of each (``base_hash`` may be null).
RECORD: Final[dict[str, tuple[type, ...]]] = {
    "concepts": (list,),
    "method": (str,),
    "base_hash": (str, type(None)),
    "config": (str,),
    "tensor_hash": (str,),
}
_SHORT: Final = 80  # option values whose JSON is longer are recorded by their SHA-256 (a preserve list, say)
_FIX: Final = "fix or remove that line, or pass --overwrite to start again"


@dataclass(frozen=True)
class Recipe:
    """What makes every patch of a run, checked against the manifest before a resume skips or makes anything."""

    method: str  # the patch header's method, e.g. "edit", "resteer"
    options: Mapping[str, Any]  # the choices that shape a patch (config, anchor, dtype, ...), as JSON values
    base_hash: Callable[[], str | None] | None = None  # the base's target hash; loads the base, called once


def patch_name(concept: str) -> str:
    """The file name of a concept's patch: ``forget-<slug>.safetensors`` (``NAME=ALIAS,...``: the name's slug)."""
    slug = re.sub(r"[^a-z0-9]+", "-", concept.split("=", 1)[0].lower()).strip("-")
    return f"forget-{slug or 'concept'}.safetensors"


def recorded_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as a manifest line records them: JSON values (tuples become lists), a long one by its hash."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        text = json.dumps(value, sort_keys=True, default=str)
        out[str(key)] = json.loads(text) if len(text) <= _SHORT else f"sha256:{_digest(text)[:16]}"
    return out


def record(patch: Patch, recipe: Recipe | None) -> dict[str, Any]:
    """The facts a done line keeps about the patch it made (``RECORD``, and the run's options)."""
    facts: dict[str, Any] = {
        "concepts": patch.concept_names,
        "method": patch.info.method,
        "base_hash": patch.info.base_hash,
        "config": _config_digest(patch),
        "tensor_hash": patch.tensor_hash(),
    }
    if recipe is not None:
        facts["options"] = recorded_options(recipe.options)
    return facts


# ------------------------------------------------------------------------------------------------ reading
def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """Every line of the folder's manifest (none when it has none), each checked for its JSON types.

    A line torn by a crash is skipped with a note on stderr; anything else that fmnpatch did not write is a
    one-line ``FmnPatchError``."""
    path = Path(folder) / MANIFEST
    if not path.exists() and not path.is_symlink():
        return []
    if not path.is_file():  # a folder, a FIFO (reading it would wait forever), a broken link
        raise FmnPatchError(
            f"{path} is not a file; remove it, or pass --overwrite to start again, or choose another --output"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FmnPatchError(f"cannot read {path}: {(e.strerror or str(e)).lower()}") from e
    entries = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.end < len(raw) or e.reason != "unexpected end of data":  # not a write cut short
                raise FmnPatchError(
                    f"line {number} of {path} is not UTF-8 text ({e.reason} at byte {e.start}); {_FIX}"
                ) from e
            _skipped(number, path)
            continue
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            _skipped(number, path)
            continue
        except RecursionError as e:
            raise FmnPatchError(
                f"line {number} of {path} nests too deep to be a manifest line; {_FIX}"
            ) from e
        entries.append(_typed(entry, number, path))
    return entries


def _skipped(number: int, path: Path) -> None:
    print(f"fmnpatch: skipped unreadable line {number} of {printable(path)}", file=sys.stderr)


def _typed(entry: object, number: int, path: Path) -> dict[str, Any]:
    where = f"line {number} of {printable(path)}"
    if not isinstance(entry, dict):
        raise FmnPatchError(f"{where} is {_kind(entry)}, not a JSON object; {_FIX}")
    for key in ("concept", "output", "status"):
        if not isinstance(entry.get(key), str):
            got = "missing" if key not in entry else _kind(entry[key])
            raise FmnPatchError(f"{where}: {key!r} is {got}, not text; {_FIX}")
    if entry["status"] not in (DONE, FAILED):
        raise FmnPatchError(
            f"{where}: status {printable(entry['status'], 40)!r} is not done or failed; {_FIX}"
        )
    for key, types in RECORD.items():
        if key in entry and not isinstance(entry[key], types):
            raise FmnPatchError(f"{where}: {key!r} is {_kind(entry[key])}, not {_NAMES[types[0]]}; {_FIX}")
    if "concepts" in entry and not all(isinstance(c, str) for c in entry["concepts"]):
        raise FmnPatchError(f"{where}: 'concepts' holds something other than text; {_FIX}")
    if "options" in entry and not isinstance(entry["options"], dict):
        raise FmnPatchError(f"{where}: 'options' is {_kind(entry['options'])}, not a JSON object; {_FIX}")
    return entry


_NAMES: Final[dict[type, str]] = {
    dict: "an object",
    list: "a list",
    str: "text",
    bool: "true/false",
    type(None): "null",
}


def _kind(value: object) -> str:
    return _NAMES.get(type(value), "a number")


def latest(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each concept's last line: what the manifest says of it now."""
    return {e["concept"]: e for e in entries}


# ------------------------------------------------------------------------------------------------ checking
def check_recipe(path: Path, lines: Mapping[str, dict[str, Any]], recipe: Recipe) -> None:
    """Refuse to resume a manifest whose done patches were made by another method or with other options than
    ``recipe``'s: a resume would mix them with this run's. Lines of an older fmnpatch record neither, and are made
    again instead."""
    shown = printable(path)
    for entry in _done(lines):
        method = entry.get("method")
        if method is not None and method != recipe.method:
            raise FmnPatchError(
                f"--resume: {shown} records patches made by {printable(method, 40)!r}, this run makes "
                f"{recipe.method!r} patches; resume with the command that made them, or choose another --output"
            )
        if "options" in entry:
            differ = _differences(entry["options"], recorded_options(recipe.options))
            if differ:
                raise FmnPatchError(
                    f"--resume: {shown} records patches made with other options ({differ}); resume with the same "
                    "options, or pass --overwrite to make every patch again"
                )


def check_base(path: Path, lines: Mapping[str, dict[str, Any]], base_hash: str) -> None:
    """Refuse to resume a manifest whose done patches were made on another base than the one of ``base_hash``."""
    for entry in _done(lines):
        if "base_hash" in entry and entry["base_hash"] != base_hash:
            raise FmnPatchError(
                f"--resume: {printable(path)} records patches made on another base (target hash "
                f"{printable(str(entry['base_hash'])[:12], 20)}), this base's is {base_hash[:12]}; resume with the "
                "same --base, or choose another --output"
            )


def _done(lines: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in lines.values() if e["status"] == DONE]


def _differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(before) | set(now) if before.get(k, None) != now.get(k, None))
    said = [f"{printable(k, 40)} {_value(before.get(k))} then, {_value(now.get(k))} now" for k in keys[:3]]
    return "; ".join(said) + (f"; {len(keys) - 3} more" if len(keys) > 3 else "")


def _value(value: object) -> str:
    return printable(json.dumps(value, default=str), 40)


def mismatch(folder: Path, entry: Mapping[str, Any]) -> str | None:
    """Why a done line does not describe the patch in the folder (None: it does, and the patch counts)."""
    name = patch_name(entry["concept"])
    if entry["output"] != name:  # an absolute or ``..`` path, or another concept's file: never opened
        return f"its line names {printable(entry['output'], 80)!r}, not {name}"
    if any(key not in entry for key in RECORD):
        return "its line was written by an older fmnpatch and records nothing of the patch to check"
    path = Path(folder) / name
    if path.is_symlink():
        return f"{printable(path)} is a link, not a patch written there"
    if not path.is_file():
        return f"{printable(path)} is {'missing' if not path.exists() else 'not a file'}"
    try:
        patch = Patch.load(path)
    except PatchFileError:
        return f"{printable(path)} does not load as a patch"
    if patch.form != "native" or not patch.verified:
        return f"{printable(path)} is not the file fmnpatch wrote (no tensor hash, or a kohya export)"
    facts = record(patch, None)
    for key, what in (
        ("concepts", "forgets other concepts"),
        ("method", "was made by another method"),
        ("base_hash", "was made on another base"),
        ("config", "was made with another config"),
        ("tensor_hash", "holds other tensors"),
    ):
        if facts[key] != entry[key]:
            return f"{printable(path)} {what} than its line records"
    return None


def _config_digest(patch: Patch) -> str:
    """The SHA-256 of the header's config, as the header writes it (sorted JSON)."""
    return _digest(json.dumps(patch.info.config, sort_keys=True))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
