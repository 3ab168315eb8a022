"""One patch per concept of a list: the concepts shared between the processes of ``accelerate launch``, every patch
written atomically the moment it is made and recorded in a manifest, so that a rerun with ``resume`` makes only
the ones still missing.

The manifest (``manifest.jsonl`` in the output folder) has one JSON object per line, appended as patches finish::

    {"concept": "circle", "output": "forget-circle.safetensors", "status": "done", "seconds": 31.2,
     "metrics": {"final_loss": 0.012, ...}, "process": 0, "date": "2025-01-01T00:00:00+00:00",
     "concepts": ["circle"], "method": "resteer", "base_hash": "...", "config": "...", "tensor_hash": "...",
     "file_hash": "...", "options": {"rank": 4, ...}}

``status`` is ``done`` or ``failed`` (then ``error`` holds the one-line reason); ``output`` is relative to the
folder. An ``--overwrite`` run appends a ``restart`` line first and drops the lines above it when it ends: until
then the old lines still describe the old patches, and a resume reads only the lines below it.

A done line records what its patch is, and a resume checks it (``fmn_patch.methods.manifest``): a concept counts
as finished when its latest line says ``done`` and the patch in the folder is the one that line records; ``resume``
makes every other concept again, replacing a patch file that its line never recorded.

The patch of a concept is the patch ``make`` returns for it, whichever process makes it and whatever else that
process made before: ``fmnpatch train --from-file FILE --each`` writes the same tensors as one ``fmnpatch train
CONCEPT`` per line.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FmnPatchError, Interrupted, StorageError
from ..files import NOTHING_WRITTEN, append_line, remove_stale_temps_in
from ..format.patch import Patch
from ..processes import Processes, Throughput, current
from ..text import printable
from .manifest import (
    DONE,
    FAILED,
    MANIFEST,
    Manifest,
    Recipe,
    check_base,
    check_recipe,
    compact,
    latest,
    line_date,
    load_manifest,
    mismatch,
    patch_name,
    read_manifest,
    record,
    restart_line,
)

__all__ = [
    "DONE",
    "FAILED",
    "MANIFEST",
    "EachConfig",
    "EachReport",
    "Recipe",
    "build_each",
    "finished",
    "patch_name",
    "read_manifest",
]


@dataclass(frozen=True)
class EachConfig:
    """Where the patches go and what to do with a folder that already holds some."""

    folder: Path
    resume: bool = False  # skip the concepts the manifest records as done
    overwrite: bool = False  # start again: replace the manifest and existing patches
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        if self.resume and self.overwrite:
            raise FmnPatchError(
                "resume and overwrite contradict each other; --resume keeps finished patches, --overwrite "
                "starts again: pass one"
            )
        if self.folder.exists() and not self.folder.is_dir():
            raise FmnPatchError(
                f"--output {str(self.folder)!r} is a file; with --each give a folder for the patches"
            )


@dataclass
class EachReport:
    """What a run did: the manifest lines it wrote (every process's), the concepts it skipped as already done."""

    folder: Path
    entries: list[dict[str, Any]]
    skipped: list[str]
    throughput: Throughput

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["status"] == FAILED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "manifest": str(self.folder / MANIFEST),
            "made": [e for e in self.entries if e["status"] == DONE],
            "failed": self.failed,
            "skipped": self.skipped,
            "throughput": {**self.throughput.to_dict(), "patches_per_hour": self.throughput.rate(3600.0)},
        }


def finished(folder: Path) -> set[str]:
    """Concepts whose latest manifest line says done and whose patch in the folder is the one that line records."""
    lines = latest(read_manifest(folder))
    return {c for c, e in lines.items() if e["status"] == DONE and mismatch(Path(folder), e) is None}


def build_each(
    concepts: Sequence[str],
    make: Callable[[str], Patch],
    config: EachConfig,
    *,
    recipe: Recipe | None = None,
    processes: Processes | None = None,
) -> EachReport:
    """``make(concept).save(folder / patch_name(concept))`` for every concept not yet finished, the concepts shared
    between the job's processes (a contiguous share each), a manifest line appended as each one ends.

    ``recipe`` says what makes the patches: its base hash is asked for once, before any concept (a base that does
    not load fails here, with nothing created), and a resume refuses a manifest of another base, method or options.
    A concept whose ``make`` raises an ``FmnPatchError`` is recorded as failed and the others go on; any other
    exception stops the process (and ``accelerate launch`` stops the rest). Ctrl-C raises ``Interrupted``, saying
    how many patches the folder holds. Every process returns the same report.
    """
    procs = processes or current()
    folder = config.folder
    _check_names(concepts)
    manifest = Manifest(folder / MANIFEST, [], [])
    if config.resume:  # a manifest fmnpatch did not write is refused here, before the base loads
        manifest = load_manifest(folder)
    elif not config.overwrite:
        there = [n for n in [MANIFEST, *(patch_name(c) for c in concepts)] if (folder / n).exists()]
        if there:
            raise FmnPatchError(
                f"{folder / there[0]} already exists; pass --resume to make only the missing patches, --overwrite "
                "to start again, or choose another --output"
            )
    lines = latest(manifest.entries)
    if recipe is not None:
        check_recipe(folder / MANIFEST, lines, recipe)
        base_hash = recipe.base_hash() if recipe.base_hash is not None else None
        if base_hash is not None:
            check_base(folder / MANIFEST, lines, base_hash)
    if procs.is_main:
        manifest.note_torn()  # after the refusals, so that a refusal is one line
    skipped = _verified(folder, concepts, lines, say=procs.is_main)
    restarted = config.overwrite and (folder / MANIFEST).is_file()
    if restarted and procs.is_main:  # the old lines stay until this run ends: a Ctrl-C keeps their patches'
        append_line(folder / MANIFEST, restart_line())
    procs.wait()  # everyone has read the manifest before anyone appends to it
    pending = [c for c in concepts if c not in skipped]
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if procs.is_main:
        remove_stale_temps_in(folder)  # what a killed run left: its own writes remove only their own
    started = time.perf_counter()
    mine = [pending[i] for i in procs.share(len(pending))]
    watcher = _Progress(folder, len(pending), procs, config.progress and procs.is_main)
    entries: list[dict[str, Any]] = []
    try:
        for concept in mine:
            entries.append(
                _make_one(
                    concept, make, folder, procs.index, recipe, replace=config.resume or config.overwrite
                )
            )
    except (KeyboardInterrupt, SystemExit) as e:
        watcher.stop()  # its bar's last line before this one
        said = _written(watcher, skipped, pending, concepts, folder)
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted(f"interrupted; {said}") from e
        if procs.is_main and e.code == 143:  # SIGTERM (a launcher stopping the job, a preempted node)
            print(f"fmnpatch: terminated; {said}", file=sys.stderr)
        raise
    except StorageError as e:
        watcher.stop()
        if created:  # a full disk at the first patch: leave no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        if folder.is_dir() and (skipped or watcher.done_since_start()):  # the error's "nothing" is that file
            written = _count(watcher, skipped, pending)
            said = f"that file was not written ({written} of {len(concepts)} patches were, in {printable(folder)})"
            raise StorageError(f"{str(e).replace(NOTHING_WRITTEN, said)}, then resume with --resume") from e
        raise
    finally:
        watcher.stop()
    everyone = procs.gather(entries)
    per_process = procs.gather([len(entries)])
    if procs.is_main and (
        restarted or manifest.restarted
    ):  # every process has ended: the new run's lines stay
        compact(folder)
    return EachReport(
        folder,
        everyone,
        skipped,
        Throughput("patches", "patches", per_process, time.perf_counter() - started),
    )


def _written(
    watcher: _Progress, skipped: Sequence[str], pending: Sequence[str], concepts: Sequence[str], folder: Path
) -> str:
    """What a stopped batch says it leaves: the patches the folder holds, and how to go on."""
    written = _count(watcher, skipped, pending)
    return f"{written} of {len(concepts)} patches written to {printable(folder)}, resume with --resume"


def _count(watcher: _Progress, skipped: Sequence[str], pending: Sequence[str]) -> int:
    """The patches a stopped batch leaves in its folder: the ones a resume skipped and the ones this run made."""
    return len(skipped) + len(watcher.done_since_start() & set(pending))


def _verified(
    folder: Path, concepts: Sequence[str], lines: dict[str, dict[str, Any]], *, say: bool
) -> list[str]:
    """The concepts whose latest line is done and describes the patch in the folder; each other done one is made
    again, and (``say``) one line on stderr says why."""
    kept = []
    for concept in concepts:
        entry = lines.get(concept)
        if entry is None or entry["status"] != DONE:
            continue
        why = mismatch(folder, entry)
        if why is None:
            kept.append(concept)
        elif say:
            print(f"fmnpatch: making {printable(concept, 80)!r} again: {why}", file=sys.stderr)
    return kept


def _make_one(
    concept: str,
    make: Callable[[str], Patch],
    folder: Path,
    process: int,
    recipe: Recipe | None,
    *,
    replace: bool,
) -> dict[str, Any]:
    output = patch_name(concept)
    started = time.perf_counter()
    entry: dict[str, Any] = {"concept": concept, "output": output}
    try:
        patch = make(concept)
        path = patch.save(folder / output, overwrite=replace)
        numbers = {
            k: v
            for k, v in patch.info.extra.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        metrics = {**numbers, "rank": patch.rank, "bytes": path.stat().st_size}
        entry |= {"status": DONE, "seconds": round(time.perf_counter() - started, 3), "metrics": metrics}
        entry |= record(patch, path, recipe)
    except StorageError:
        raise  # a full disk or a read-only folder fails every concept alike: stop at the first
    except FmnPatchError as e:
        entry |= {"status": FAILED, "seconds": round(time.perf_counter() - started, 3), "error": str(e)}
    entry |= {"process": process, "date": line_date()}
    append_line(folder / MANIFEST, json.dumps(entry))
    return entry


def _check_names(concepts: Sequence[str]) -> None:
    if not concepts:
        raise FmnPatchError("no concept given; put one concept per line in the --from-file file")
    seen: dict[str, str] = {}
    for c in concepts:
        name = patch_name(c)
        if name in seen:
            what = "is listed twice" if seen[name] == c else f"and {seen[name]!r} both make {name}"
            raise FmnPatchError(f"concept {c!r} {what}; one patch per concept: remove or rename one line")
        seen[name] = c


@dataclass
class _Progress:
    """The main process's bar over the whole job: it reads the manifest the processes append to, once a second."""

    folder: Path
    total: int
    procs: Processes
    enabled: bool
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _start: int = 0  # manifest bytes before this run: the lines after it are this run's

    def __post_init__(self) -> None:
        path = self.folder / MANIFEST
        self._start = path.stat().st_size if path.exists() else 0
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from tqdm import tqdm

        bar = tqdm(total=self.total, desc="patches", unit="patch", file=sys.stderr)
        try:
            while not self._stop.wait(1.0):
                self._show(bar)
            self._show(bar)
        finally:
            bar.close()

    def _lines(self) -> list[dict[str, Any]]:
        """The manifest lines this run's processes appended (a torn one left out)."""
        path = self.folder / MANIFEST
        try:
            with path.open("rb") as f:
                f.seek(self._start)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        out = []
        for line in text.split("\n"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def done_since_start(self) -> set[str]:
        """The concepts this run's processes made (any process's lines)."""
        return {
            e["concept"]
            for e in self._lines()
            if e.get("status") == DONE and isinstance(e.get("concept"), str)
        }

    def _show(self, bar: Any) -> None:
        counts = [0] * self.procs.count
        for entry in self._lines():
            try:
                counts[int(entry["process"])] += 1
            except (ValueError, KeyError, IndexError, TypeError):
                continue
        if self.procs.count > 1:
            bar.set_postfix_str(" ".join(f"p{i} {n}" for i, n in enumerate(counts)), refresh=False)
        bar.update(sum(counts) - bar.n)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
