"""The manifest of an ``--each`` run: read strictly, and on resume taken as a record to check, not a promise.

``manifest.jsonl`` in the output folder has one JSON object per line (see ``fmn_patch.methods.each``). A ``done``
line records what its patch is: the header's concepts, method, base hash, a digest of its config, the tensors' hash,
the file's hash, and the options of the run that made it (``Recipe``). On resume a done line counts only if the
file it names is ``patch_name(concept)`` in the folder itself (no other path is ever opened), loads as a patch, and
its header, tensors and bytes are the ones the line records; any other done line is made again, with one line on
stderr saying why.

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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from ..errors import FmnPatchError
from ..files import atomic_write
from ..format.patch import Patch
from ..text import printable

MANIFEST: Final = "manifest.jsonl"
DONE, FAILED = "done", "failed"
#: The status of the line an ``--overwrite`` run appends before its first patch: the lines above it describe the
#: old run's patches, kept until the new run ends (``compact``), and no longer count for a resume.
RESTART: Final = "restart"
#: What a done line records of its patch, and the JSON type of each (``base_hash`` may be null).
RECORD: Final[dict[str, tuple[type, ...]]] = {
    "concepts": (list,),
    "method": (str,),
    "base_hash": (str, type(None)),
    "config": (str,),
    "tensor_hash": (str,),
    "file_hash": (
        str,
    ),  # SHA-256 of the file's bytes: any change after it was written, the header's date included
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


def record(patch: Patch, path: Path, recipe: Recipe | None) -> dict[str, Any]:
    """The facts a done line keeps about the patch it wrote to ``path`` (``RECORD``, and the run's options)."""
    facts: dict[str, Any] = {
        "concepts": patch.concept_names,
        "method": patch.info.method,
        "base_hash": patch.info.base_hash,
        "config": _config_digest(patch),
        "tensor_hash": patch.tensor_hash(),
        "file_hash": _file_hash(path),
    }
    if recipe is not None:
        facts["options"] = recorded_options(recipe.options)
    return facts


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class Manifest:
    """The lines of a manifest, each checked for its JSON types, and the numbers of the lines a crash tore;
    ``restarted``: it holds a restart line, above which lie the lines of the run an ``--overwrite`` replaces."""

    path: Path
    entries: list[dict[str, Any]]
    torn: list[int]
    restarted: bool = False

    def note_torn(self) -> None:
        """One line on stderr naming the torn lines (after any refusal, so that a refusal stays one line)."""
        if self.torn:
            shown = ", ".join(map(str, self.torn[:10])) + (" ..." if len(self.torn) > 10 else "")
            plural = "s" if len(self.torn) > 1 else ""
            print(
                f"fmnpatch: skipped unreadable line{plural} {shown} of {printable(self.path)}",
                file=sys.stderr,
            )


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """Every line of the folder's manifest (none when it has none), each checked for its JSON types.

    A line torn by a crash is skipped with a note on stderr; anything else that fmnpatch did not write is a
    one-line ``FmnPatchError``."""
    manifest = load_manifest(folder)
    manifest.note_torn()
    return manifest.entries


def load_manifest(folder: Path) -> Manifest:
    """``read_manifest`` that leaves the note of torn lines to the caller (``Manifest.note_torn``)."""
    path = Path(folder) / MANIFEST
    if not path.exists() and not path.is_symlink():
        return Manifest(path, [], [])
    if not path.is_file():  # a folder, a FIFO (reading it would wait forever), a broken link
        raise FmnPatchError(
            f"{path} is not a file; remove it, or pass --overwrite to start again, or choose another --output"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FmnPatchError(f"cannot read {path}: {(e.strerror or str(e)).lower()}") from e
    manifest = Manifest(path, [], [])
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.end < len(raw) or e.reason != "unexpected end of data":  # not a write cut short
                raise FmnPatchError(
                    f"line {number} of {path} is not UTF-8 text ({e.reason} at byte {e.start}); {_FIX}"
                ) from e
            manifest.torn.append(number)
            continue
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            manifest.torn.append(number)
            continue
        except RecursionError as e:
            raise FmnPatchError(f"line {number} of {path} nests too deep for a manifest line; {_FIX}") from e
        except ValueError as e:  # JSON, but not what a manifest holds: an integer of thousands of digits
            raise FmnPatchError(f"line {number} of {path} holds a value out of range ({e}); {_FIX}") from e
        if _restart(entry):
            manifest.entries.clear()  # an --overwrite run began here: the lines above are the run it replaces
            manifest.torn.clear()
            manifest.restarted = True
            continue
        manifest.entries.append(_typed(entry, number, path))
    return manifest


def _restart(entry: object) -> bool:
    return isinstance(entry, dict) and entry.get("status") == RESTART


def line_date() -> str:
    """The date a manifest line records: now, UTC, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def restart_line() -> str:
    """The line an ``--overwrite`` run appends before it makes anything."""
    return json.dumps({"status": RESTART, "date": line_date()})


def compact(folder: Path) -> None:
    """Drop the lines above the manifest's last restart line (the replaced run's), in one atomic write: called when
    the ``--overwrite`` run that appended it (or a resume of it) ends, so that until then a Ctrl-C keeps the old
    run's record of every old patch still in the folder."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return
    lines = path.read_bytes().split(b"\n")
    starts = [i for i, raw in enumerate(lines) if _restart(_json_or_none(raw))]
    if starts:
        kept = b"\n".join(lines[starts[-1] + 1 :])
        atomic_write(path, lambda tmp: tmp.write_bytes(kept), overwrite=True)


def _json_or_none(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:  # a torn line, or not UTF-8
        return None


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
    except FmnPatchError:
        return f"{printable(path)} does not load as a patch"
    if patch.form != "native" or not patch.verified:
        return f"{printable(path)} is not the file fmnpatch wrote (no tensor hash, or a kohya export)"
    facts = record(patch, path, None)
    for key, what in (
        ("concepts", "forgets other concepts than its line records"),
        ("method", "was made by another method than its line records"),
        ("base_hash", "was made on another base than its line records"),
        ("config", "was made with another config than its line records"),
        ("tensor_hash", "holds other tensors than its line records"),
        ("file_hash", "was changed after its line was written"),
    ):
        if facts[key] != entry[key]:
            return f"{printable(path)} {what}"
    return None


def _config_digest(patch: Patch) -> str:
    """The SHA-256 of the header's config, as the header writes it (sorted JSON)."""
    return _digest(json.dumps(patch.info.config, sort_keys=True))


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
