"""Faults outside the input files (issue 29), where a command writes: full disks and file-size limits, report
sets, strict JSON records, outputs on top of the base, and an unwritable stderr. The Hub's faults are in
test_fault_hub; devices, launcher variables, the reference cache and very long values in test_fault_environment.

Every case runs the real command from the typer app (``main``, in this process) on real parts: the bundled toy
model, real patches, a real small tmpfs for a full disk (root only; skipped elsewhere), the real ``RLIMIT_FSIZE``
for a file-size limit. Each asserts exit 2 (130 for Ctrl-C), one error line and no traceback, and that the folder
it wrote to is byte for byte what it was: nothing created, changed or left behind. Lines a command prints before
the fault (its progress, ``fusing ...``) are the progress channel; the error is the last line and the only one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import safetensors.torch
from faults import ROOT, _quiet_phases, inputs, refused, run, snapshot, tree_stat  # noqa: F401  (the fixtures)
from hypothesis import given, settings
from hypothesis import strategies as st

from fmn_patch.cli.app import main
from fmn_patch.errors import FmnPatchError, OutputError, StorageError
from fmn_patch.files import atomic_files, os_error_in
from fmn_patch.records import NOT_FINITE, to_json


# -------------------------------------------------------------------------------- full disks, size limits
@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """``ulimit -f``: writes past ``limit`` bytes fail with EFBIG (``main`` ignores SIGXFSZ, as the CLI does)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@contextlib.contextmanager
def small_disk(where: Path, size_kb: int) -> Iterator[Path]:
    """A real tmpfs of ``size_kb`` KiB mounted at ``where`` (root only)."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"no small tmpfs can be mounted here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Take the free space of ``disk`` down to about ``leave`` bytes."""
    st_ = os.statvfs(disk)
    free = st_.f_bavail * st_.f_frsize
    if free > leave:
        with contextlib.suppress(OSError):
            (disk / "filler").write_bytes(b"x" * (free - leave))


#: Every command that writes, as (name, what it writes under OUT, its arguments). ``{x}`` are filled in.
WRITERS: list[tuple[str, str, list[str]]] = [
    ("edit", "p.safetensors", ["edit", "circle", "--rank", "4", "-o", "{out}"]),
    ("train", "p.safetensors", ["train", "circle", "--steps", "1", "--rank", "4", "-o", "{out}"]),
    ("merge", "p.safetensors", ["merge", "{circle}", "{bob}", "-o", "{out}"]),
    ("export", "p.safetensors", ["export", "{circle}", "-o", "{out}"]),
    ("apply", "fused", ["apply", "toy", "{circle}", "-o", "{out}"]),
    (
        "eval",
        "report",
        ["eval", "toy", "{circle}", "--steps", "1", "--seeds", "1", "--concept", "circle", "-o", "{out}"],
    ),
    ("each", "batch", ["edit", "circle", "bob", "--rank", "4", "--each", "-o", "{out}"]),
]
FAULTS = {"full": "no space left on device", "ulimit": "file too large"}
# Each writer under each fault, to a new output and over an existing one (--overwrite: the old one must stay
# whole). By default the full disk gets a new output and the size limit an existing one; the other half is slow.
# `--each --overwrite` is left out: it starts a batch again by design (the batch's own tests).
CASES = [
    pytest.param(
        name,
        fault,
        existing,
        id=f"{name}-{fault}-{'overwrite' if existing else 'new'}",
        marks=() if existing == (fault == "ulimit") else pytest.mark.slow,
    )
    for name, _, _ in WRITERS
    for fault in FAULTS
    for existing in (False, True)
    if not (name == "each" and existing)
]


def _argv(name: str, out: Path, inputs: dict[str, Path]) -> list[str]:
    _, _, args = next(w for w in WRITERS if w[0] == name)
    return [a.format(out=out, circle=inputs["circle"], bob=inputs["bob"]) for a in args]


@pytest.mark.parametrize(("name", "fault", "existing"), CASES)
def test_a_full_disk_or_a_size_limit_is_one_line_and_changes_nothing(
    capsys, tmp_path, monkeypatch, inputs, name, fault, existing
):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    target = next(w[1] for w in WRITERS if w[0] == name)
    with contextlib.ExitStack() as stack:
        folder = (
            stack.enter_context(small_disk(tmp_path / "disk", 64)) if fault == "full" else tmp_path / "out"
        )
        folder.mkdir(exist_ok=True)
        out = folder / target
        argv = _argv(name, out, inputs)
        if existing:  # a whole earlier output, to be replaced with --overwrite
            if name == "eval":
                code, _, err = run(capsys, *argv)
                assert code == 0, err[-2000:]
            elif name == "apply":
                out.mkdir()
                (out / "model_index.json").write_text("{}")
            else:
                shutil.copyfile(inputs["bob"], out)
            argv.append("--overwrite")
        if fault == "full":
            fill(folder, 10 * 1024)  # room for report.json and report.md; no patch, grid or model fits
        before = snapshot(folder)
        with file_size_limit(8 * 1024) if fault == "ulimit" else contextlib.nullcontext():
            code, _, err = run(capsys, *argv)
        line = refused(code, err)
        assert FAULTS[fault] in line and str(folder) in line, line
        assert snapshot(folder) == before, f"{name} changed or left files in {folder}"
    assert os.listdir(tmp_path / "work") == []


def test_each_stops_at_a_full_disk_instead_of_failing_every_concept(capsys, tmp_path, monkeypatch, inputs):
    """A storage fault fails every concept alike: the batch stops at the first, with the one error line."""
    monkeypatch.chdir(tmp_path)
    with file_size_limit(8 * 1024):
        code, _, err = run(capsys, "edit", "circle", "bob", "square", "--rank", "4", "--each", "-o", "b")
    line = refused(code, err)
    assert "failed:" not in err and "file too large" in line
    assert list(tmp_path.iterdir()) == [], "no patch, no temp file, no empty folder"


@pytest.mark.parametrize(
    "message",
    [
        "Error while serializing: I/O error: No space left on device (os error 28)",
        "Error while serializing: I/O error: File too large (os error 27)",
        "I/O error: Read-only file system (os error 30)",
        "I/O error: Permission denied (os error 13)",
    ],
)
def test_a_writer_that_names_the_os_error_only_in_its_message_is_mapped(tmp_path, message):
    """safetensors' Rust writer raises ``SafetensorError`` with the OS error in its text: mapped by its number."""
    keep = tmp_path / "keep.bin"
    keep.write_bytes(b"old")

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise safetensors.SafetensorError(message)

    from fmn_patch.files import atomic_write

    with pytest.raises(StorageError) as e:
        atomic_write(keep, write, overwrite=True)
    code = int(message.rsplit("os error ", 1)[1].rstrip(")"))
    assert os.strerror(code).lower() in str(e.value) and "nothing was written" in str(e.value)
    assert keep.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.bin"]
    assert os_error_in(ValueError("no number here")) is None
    assert os_error_in(FmnPatchError("(os error 28)")) is None  # our own message is never re-read


# ------------------------------------------------------------------------------------- a set of reports
def _writers(tag: str) -> dict[str, Callable[[Path], object]]:
    return {name: (lambda t, n=name: t.write_text(f"{tag} {n}")) for name in ("a.json", "b.md", "c.png")}


@pytest.mark.parametrize("fail_at", [0, 1, 2])
@pytest.mark.parametrize("how", ["error", "ctrl-c"])
def test_a_report_set_is_published_whole_or_rolled_back(tmp_path, monkeypatch, fail_at, how):
    """The renames of a set: a failure or Ctrl-C at any of them puts every file back as it was."""
    import fmn_patch.files as files

    folder = tmp_path / "reports"
    atomic_files(
        folder, {"a.json": _writers("old")["a.json"], "b.md": _writers("old")["b.md"]}, overwrite=False
    )
    (folder / "other.txt").write_text("not ours")
    before = snapshot(folder)
    real, calls = files._publish, []

    def publish(tmp, path, **kw):
        calls.append(path.name)
        if len(calls) == fail_at + 1:
            if how == "ctrl-c":
                raise KeyboardInterrupt
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real(tmp, path, **kw)

    monkeypatch.setattr(files, "_publish", publish)
    with pytest.raises(KeyboardInterrupt if how == "ctrl-c" else OutputError):
        atomic_files(folder, _writers("new"), overwrite=True)
    assert snapshot(folder) == before
    monkeypatch.setattr(files, "_publish", real)
    atomic_files(folder, _writers("new"), overwrite=True)
    assert {p.name: p.read_text() for p in folder.iterdir()} == {
        "a.json": "new a.json",
        "b.md": "new b.md",
        "c.png": "new c.png",
        "other.txt": "not ours",
    }


def test_eval_report_json_is_strict_json_when_a_score_is_not_finite(capsys, tmp_path, monkeypatch, inputs):
    """A NaN score (a broken model) is ``null`` in report.json and in --json, and the report says which."""
    import fmn_patch.cli.evaluate as eval_cli

    real = eval_cli.evaluate_patches

    def with_nan(*args, **kwargs):
        report = real(*args, **kwargs)
        scores = report.models[-1].score.concepts
        scores["circle"] = dataclasses.replace(scores["circle"], m_score=math.nan, acc=math.inf)
        return report

    monkeypatch.setattr(eval_cli, "evaluate_patches", with_nan)
    out = tmp_path / "ev"
    argv = ["eval", "toy", str(inputs["circle"]), "--steps", "1", "--seeds", "1", "--concept", "circle"]
    code, stdout, err = run(capsys, *argv, "-o", str(out), "--json")
    assert code == 0, err[-2000:]

    def strict(text: str) -> dict:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))

    for data in (strict((out / "report.json").read_text()), strict(stdout)):
        circle = data["models"][-1]["concepts"]["circle"]
        assert circle["m_score"] is None and circle["acc"] is None
        assert {"models.1.concepts.circle.m_score", "models.1.concepts.circle.acc"} <= set(data[NOT_FINITE])


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=5) | st.none(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
        max_leaves=20,
    )
)
def test_records_are_always_strict_json(value):
    def not_finite(v: object) -> bool:
        if isinstance(v, float):
            return not math.isfinite(v)
        if isinstance(v, dict):
            return any(not_finite(x) for x in v.values())
        return isinstance(v, list) and any(not_finite(x) for x in v)

    text = to_json({"value": value})
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert (NOT_FINITE in data) == not_finite(value)


# ------------------------------------------------------------------------------- outputs on top of the base
def _apart_cases() -> list[tuple[str, list[str]]]:
    """(id, argv) for each command that reads a base and writes, each output placed on, above or in the base."""
    cases = []
    places = {
        "itself": "{base}",
        "parent": "{parent}",
        "inside": "{base}/sub",
        "file-inside": "{base}/p.safetensors",
    }
    for place, path in places.items():
        folder_out = path if place != "file-inside" else "{base}/unet"
        file_out = path if place == "file-inside" else path + ".safetensors" if place == "inside" else None
        for overwrite in ([], ["--overwrite"]):
            cases += [
                (f"apply-{place}", ["apply", "{base}", "{circle}", "-o", folder_out, *overwrite]),
                (f"eval-{place}", ["eval", "{base}", "-o", folder_out, *overwrite]),
                (
                    f"attack-{place}",
                    ["attack", "{base}", "{circle}", "--concept", "circle", "--out", folder_out, *overwrite],
                ),
                (
                    f"each-{place}",
                    ["edit", "circle", "--base", "{base}", "--each", "-o", folder_out, *overwrite],
                ),
            ]
            if file_out is not None:
                cases += [
                    (f"edit-{place}", ["edit", "circle", "--base", "{base}", "-o", file_out, *overwrite]),
                    (f"train-{place}", ["train", "circle", "--base", "{base}", "-o", file_out, *overwrite]),
                    (
                        f"correct-{place}",
                        [
                            "correct",
                            "circle",
                            "--attribute",
                            "colour",
                            "--base",
                            "{base}",
                            "-o",
                            file_out,
                            *overwrite,
                        ],
                    ),
                ]
    grid = ["apply", "{base}", "{circle}", "-p", "x", "--grid", "{base}/g.png"]
    return [*cases, ("apply-grid-inside", grid), ("apply-grid-inside-overwrite", [*grid, "--overwrite"])]


@pytest.mark.parametrize(("case", "argv"), _apart_cases(), ids=[c for c, _ in _apart_cases()])
def test_an_output_on_above_or_inside_the_base_is_refused(capsys, tmp_path, inputs, case, argv):
    base = tmp_path / "models" / "base"
    base.parent.mkdir()
    os.symlink(inputs["base"], base)  # through a link: the real folder is what counts
    before = tree_stat(inputs["base"])
    args = [a.format(base=base, parent=base.parent, circle=inputs["circle"]) for a in argv]
    code, out, err = run(capsys, *args)
    line = refused(code, err)
    assert "base folder" in line and out == "", line
    assert tree_stat(inputs["base"]) == before and sorted(os.listdir(base.parent)) == ["base"]


# -------------------------------------------------------------------------------------- an unwritable stderr
def test_an_unwritable_stderr_keeps_exit_code_2(monkeypatch):
    full = open("/dev/full", "w") if os.path.exists("/dev/full") else None  # noqa: SIM115
    if full is None:
        pytest.skip("no /dev/full here")
    monkeypatch.setattr(sys, "stderr", full)
    with pytest.raises(SystemExit) as e:
        main(["inspect", "no-such.safetensors"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["edit", "circle", "--device", "cuda:-1"])
    assert e.value.code == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "shell",
    [
        "{python} -m fmn_patch inspect no-such.safetensors 2>/dev/full",
        "ulimit -f 8 && {python} -m fmn_patch merge {circle} {bob} -o m.safetensors",
    ],
    ids=["stderr-full", "ulimit-f"],
)
def test_in_a_real_process(tmp_path, inputs, shell):
    """What only a whole process shows: Python's last flush of an unwritable stderr, and SIGXFSZ past ``ulimit -f``
    (its default action kills the process; the CLI ignores it so the write fails with EFBIG)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = shell.format(python=sys.executable, circle=inputs["circle"], bob=inputs["bob"])
    result = subprocess.run(
        ["sh", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-2000:]
    if "ulimit" in shell:
        refused(result.returncode, result.stderr)
        assert "file too large" in result.stderr and list(tmp_path.iterdir()) == []
