"""One patch per concept of a list: the concepts shared between the processes of ``accelerate launch``, every patch
written atomically the moment it is made and recorded in a manifest, so that a rerun with ``resume`` makes only
the ones still missing.

The manifest (``manifest.jsonl`` in the output folder) has one JSON object per line, appended as patches finish::

    {"concept": "circle", "output": "forget-circle.safetensors", "status": "done", "seconds": 31.2,
     "metrics": {"final_loss": 0.012, ...}, "process": 0, "date": "2025-01-01T00:00:00+00:00"}

``status`` is ``done`` or ``failed`` (then ``error`` holds the one-line reason); ``output`` is relative to the
folder. A concept counts as finished when its latest line says ``done`` and its patch is there; ``resume`` makes
every other concept again, replacing a patch file that its line never recorded.

The patch of a concept is the patch ``make`` returns for it, whichever process makes it and whatever else that
process made before: ``fmnpatch train --from-file FILE --each`` writes the same tensors as one ``fmnpatch train
CONCEPT`` per line.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import FmnPatchError, StorageError
from ..files import append_line
from ..format.patch import Patch
from ..processes import Processes, Throughput, current

MANIFEST = "manifest.jsonl"
DONE, FAILED = "done", "failed"


def patch_name(concept: str) -> str:
    """The file name of a concept's patch: ``forget-<slug>.safetensors`` (``NAME=ALIAS,...``: the name's slug)."""
    slug = re.sub(r"[^a-z0-9]+", "-", concept.split("=", 1)[0].lower()).strip("-")
    return f"forget-{slug or 'concept'}.safetensors"


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


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """Every line of the folder's manifest (none when it has none); a torn line, cut by a crash, is skipped."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            print(f"fmnpatch: skipped unreadable line {number} of {path}", file=sys.stderr)
            continue
        if isinstance(entry, dict) and {"concept", "status", "output"} <= set(entry):
            entries.append(entry)
    return entries


def finished(folder: Path) -> set[str]:
    """Concepts whose latest manifest line says done and whose patch file exists."""
    latest = {e["concept"]: e for e in read_manifest(folder)}
    return {c for c, e in latest.items() if e["status"] == DONE and (Path(folder) / e["output"]).is_file()}


def build_each(
    concepts: Sequence[str],
    make: Callable[[str], Patch],
    config: EachConfig,
    *,
    processes: Processes | None = None,
) -> EachReport:
    """``make(concept).save(folder / patch_name(concept))`` for every concept not yet finished, the concepts shared
    between the job's processes (a contiguous share each), a manifest line appended as each one ends.

    A concept whose ``make`` raises an ``FmnPatchError`` is recorded as failed and the others go on; any other
    exception stops the process (and ``accelerate launch`` stops the rest). Every process returns the same report.
    """
    procs = processes or current()
    folder = config.folder
    _check_names(concepts)
    skipped: list[str] = []
    if config.overwrite:
        if procs.is_main:
            (folder / MANIFEST).unlink(missing_ok=True)
    elif config.resume:
        done = finished(folder)
        skipped = [c for c in concepts if c in done]
    else:
        there = [n for n in [MANIFEST, *(patch_name(c) for c in concepts)] if (folder / n).exists()]
        if there:
            raise FmnPatchError(
                f"{folder / there[0]} already exists; pass --resume to make only the missing patches, --overwrite "
                "to start again, or choose another --output"
            )
    procs.wait()  # everyone has read the manifest before anyone appends to it
    pending = [c for c in concepts if c not in skipped]
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    mine = [pending[i] for i in procs.share(len(pending))]
    watcher = _Progress(folder, len(pending), procs, config.progress and procs.is_main)
    entries: list[dict[str, Any]] = []
    try:
        for concept in mine:
            entries.append(
                _make_one(concept, make, folder, procs.index, replace=config.resume or config.overwrite)
            )
    except StorageError:
        if created:  # a full disk at the first patch: leave no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        watcher.stop()
    everyone = procs.gather(entries)
    per_process = procs.gather([len(entries)])
    return EachReport(
        folder,
        everyone,
        skipped,
        Throughput("patches", "patches", per_process, time.perf_counter() - started),
    )


def _make_one(
    concept: str, make: Callable[[str], Patch], folder: Path, process: int, *, replace: bool
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
    except StorageError:
        raise  # a full disk or a read-only folder fails every concept alike: stop at the first
    except FmnPatchError as e:
        entry |= {"status": FAILED, "seconds": round(time.perf_counter() - started, 3), "error": str(e)}
    entry |= {"process": process, "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
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
        if not self.enabled:
            return
        path = self.folder / MANIFEST
        self._start = path.stat().st_size if path.exists() else 0
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

    def _show(self, bar: Any) -> None:
        path = self.folder / MANIFEST
        if not path.exists():
            return
        with path.open("rb") as f:
            f.seek(self._start)
            lines = f.read().decode("utf-8", "replace").splitlines()
        counts = [0] * self.procs.count
        for line in lines:
            try:
                counts[int(json.loads(line)["process"])] += 1
            except (ValueError, KeyError, IndexError, TypeError):
                continue
        if self.procs.count > 1:
            bar.set_postfix_str(" ".join(f"p{i} {n}" for i, n in enumerate(counts)), refresh=False)
        bar.update(sum(counts) - bar.n)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
