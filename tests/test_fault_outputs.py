"""Faults outside the input files (issue 29): full disks and file-size limits, report sets, outputs on top of the
base, Hub references and an unreachable Hub, devices, launcher variables, the reference cache, very long values and
an unwritable stderr.

Every case runs the real command from the typer app (``main``, in this process) on real parts: the bundled toy
model, real patches, a real small tmpfs for a full disk (root only; skipped elsewhere), the real ``RLIMIT_FSIZE``
for a file-size limit, the real huggingface_hub client against a closed local port. Each asserts exit 2 (130 for
Ctrl-C), one error line and no traceback, and that the folder it wrote to is byte for byte what it was: nothing
created, changed or left behind. Lines a command prints before the fault (its progress, ``fusing ...``) are the
progress channel; the error is the last line and the only one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmn_patch import processes
from fmn_patch.cli import display
from fmn_patch.cli.app import main
from fmn_patch.errors import FmnPatchError, OutputError, StorageError
from fmn_patch.families.base import load_base
from fmn_patch.files import atomic_files, os_error_in
from fmn_patch.records import NOT_FINITE, to_json

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "fmn_patch" / "data" / "toy" / "pipeline"


# ----------------------------------------------------------------------------------------------------- helpers
def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def refused(code: int, err: str, *, code_wanted: int = 2) -> str:
    """The one error line of a refused run (exit ``code_wanted``, the last line, no traceback)."""
    assert code == code_wanted, err[-2000:]
    assert "Traceback" not in err and "Error:" not in err and "Error(" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-2000:]
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` and its bytes (None: a folder)."""
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


def tree_stat(folder: Path) -> dict[str, tuple[int, int]]:
    """Cheaper than ``snapshot`` for a model folder: each file's size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(autouse=True)
def _quiet_phases(monkeypatch, tmp_path_factory):
    monkeypatch.setattr(display, "QUIET_SECONDS", 600.0)  # a slow machine: no progress line mid-phase
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path_factory.getbasetemp() / "refcache"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Two real edit patches on the toy model, and a copy of the toy pipeline as a local base folder."""
    folder = tmp_path_factory.mktemp("inputs")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for concept in ("circle", "bob"):
            with pytest.raises(SystemExit) as e:
                main(["edit", concept, "-o", f"{concept}.safetensors", "--rank", "4"])
            assert e.value.code in (0, None)
    base = folder / "base"
    shutil.copytree(TOY, base)
    return {"circle": folder / "circle.safetensors", "bob": folder / "bob.safetensors", "base": base}


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


# ------------------------------------------------------------------------------------------------- the Hub
HUB_REFS = [  # (a "/./" segment is dropped by the Path-typed arguments: tested on the parser below)
    "hf://a/b/../../c.safetensors",
    "hf://a/b@main/../x.safetensors",
    "hf://a/b/x/../../../etc/passwd.safetensors",
]


@pytest.mark.parametrize("ref", HUB_REFS)
@pytest.mark.parametrize(
    "argv",
    [
        ["pull", "{ref}"],
        ["apply", "toy", "{ref}"],
        ["inspect", "{ref}"],
        ["export", "{ref}", "-o", "k.safetensors"],
        ["merge", "{ref}", "{ref}", "-o", "m.safetensors"],
        ["eval", "toy", "{ref}"],
    ],
    ids=lambda a: a[0],
)
def test_a_hub_reference_with_dot_segments_is_one_line(capsys, tmp_path, monkeypatch, ref, argv):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *[a.format(ref=ref) for a in argv])
    line = refused(code, err)
    assert "'.' or '..' segment" in line and "hf://ORG/NAME" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ref", [*HUB_REFS, "hf://a/b/./c.safetensors", "a/b/sub/../c.safetensors"])
def test_the_parser_refuses_dot_segments(ref):
    from fmn_patch.hub.errors import HubError
    from fmn_patch.hub.refs import HubRef

    with pytest.raises(HubError, match=r"'\.' or '\.\.' segment"):
        HubRef.parse(ref)


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """The real huggingface_hub client, its endpoint a closed local port, its waits between retries cut short;
    its own log lines collected (none may get through)."""
    import logging
    import time

    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils._http import default_client_factory

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is: connections are refused
    huggingface_hub.set_client_factory(default_client_factory)
    huggingface_hub.close_session()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_write")
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the retries run, without their waits

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    collect = Collect()
    logger = logging.getLogger("huggingface_hub")
    logger.addHandler(collect)
    level = logger.level
    logger.setLevel(logging.WARNING)  # huggingface_hub's default
    yield collect
    logger.setLevel(level)
    logger.removeHandler(collect)
    huggingface_hub.close_session()


@pytest.mark.parametrize(
    "argv",
    [
        ["pull", "hf://acme/x"],
        ["apply", "toy", "hf://acme/x", "-p", "x"],
        ["inspect", "hf://acme/x"],
        ["search", "circle"],
        ["push", "{circle}", "acme/x"],
        ["pull", "acme/x", "-o", "got"],
    ],
    ids=lambda a: "-".join(a[:2]),
)
def test_an_unreachable_hub_is_one_line_without_the_librarys_own(
    capsys, tmp_path, monkeypatch, unreachable_hub, inputs, argv
):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    code, _, err = run(capsys, *[a.format(circle=inputs["circle"]) for a in argv])
    line = refused(code, err)
    assert "cannot reach the Hub (http://127.0.0.1:" in line, line
    assert "thrown while requesting" not in err and "Retrying" not in err
    assert unreachable_hub.lines == [], "huggingface_hub's own lines got through"
    assert os.listdir(tmp_path / "work") == []


# ----------------------------------------------------------------------------------------------- devices
BAD_DEVICES = ["cuda", "cuda:0", "garbage", "", "cuda:-1", "mps", "xla", "meta", "CPU", " cpu", "x" * 10_000]
DEVICE_COMMANDS = [
    ["edit", "circle"],
    ["edit", "circle", "bob", "--each"],
    ["train", "circle"],
    ["apply", "toy", "{circle}"],
    ["eval", "toy"],
    ["correct", "circle", "--attribute", "colour"],
    ["attack", "toy", "--concept", "circle"],
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", BAD_DEVICES, ids=lambda d: repr(d[:12]))
@pytest.mark.parametrize("argv", DEVICE_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_a_device_this_machine_lacks_is_one_line_before_anything_loads(
    capsys, tmp_path, monkeypatch, inputs, device, argv
):
    monkeypatch.chdir(tmp_path)
    loaded = []
    monkeypatch.setattr("fmn_patch.families.base.family_for_index", lambda *a: loaded.append(a))
    code, _, err = run(capsys, *[a.format(circle=inputs["circle"]) for a in argv], "--device", device)
    line = refused(code, err)
    assert "--device" in line and "use one of cpu" in line and len(line) < 400, line
    assert loaded == [] and list(tmp_path.iterdir()) == []


def test_the_library_checks_the_device_too():
    with pytest.raises(FmnPatchError, match=r"device 'meta'.*use one of cpu"):
        load_base("toy", device="meta")


# ---------------------------------------------------------------------------------------- launcher variables
STRAY = [
    {"WORLD_SIZE": "2"},
    {"RANK": "1"},
    {"LOCAL_RANK": "0"},
    {"WORLD_SIZE": "2", "RANK": "0"},
    {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},  # no rendezvous address
    {"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
    {"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
    {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "http"},
    {"WORLD_SIZE": "-2", "RANK": "0"},
    {"OMPI_COMM_WORLD_SIZE": "2"},
    {"PMI_SIZE": "2", "PMI_RANK": "7"},
]
LAUNCHED = [  # what torchrun and mpirun set: accepted (the group is joined later, by accelerate)
    {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
    {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
    {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "RANK": "1"},
    {},
]
ALL_VARIABLES = {name for env in STRAY + LAUNCHED for name in env}


@pytest.fixture
def clean_env(monkeypatch):
    for name in ALL_VARIABLES | {"LOCAL_WORLD_SIZE", "PMI_RANK", "MV2_COMM_WORLD_SIZE"}:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(processes, "_CURRENT", [])


@pytest.mark.parametrize("env", STRAY, ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items()))
def test_a_launchers_variables_without_the_launcher_are_one_line(capsys, monkeypatch, clean_env, inputs, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "inspect", str(inputs["circle"]))
    line = refused(code, err)
    assert "no launcher started this process" in line and "accelerate launch" in line and out == ""
    assert line.startswith("fmnpatch: error: "), "no '(process N)' for a process no launcher started"


@pytest.mark.parametrize("env", LAUNCHED, ids=lambda e: "-".join(e) or "none")
def test_a_launchers_whole_set_is_accepted(clean_env, env):
    processes.check_launcher_environment(env)


# ----------------------------------------------------------------------------------------- the reference cache
@pytest.fixture(scope="module")
def toy():
    return load_base("toy")


DAMAGE: dict[str, Callable[[torch.Tensor], dict[str, torch.Tensor] | bytes]] = {
    "shape": lambda t: {"latents": torch.zeros(t.shape[0], t.shape[1], 8, 8)},
    "count": lambda t: {"latents": t[:0]},
    "channels": lambda t: {"latents": torch.zeros(t.shape[0], 3, *t.shape[2:])},
    "flat": lambda t: {"latents": t.flatten()},
    "int": lambda t: {"latents": t.to(torch.int32)},
    "nan": lambda t: {"latents": t.clone().fill_(math.nan)},
    "inf": lambda t: {"latents": t.clone().fill_(math.inf)},
    "extra": lambda t: {"latents": t, "other": t.clone()},
    "renamed": lambda t: {"images": t},
    "garbage": lambda t: b"\x00" * 64,
    "empty": lambda t: b"",
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_reference_cache_entry_that_does_not_verify_is_drawn_again(
    capsys, tmp_path, monkeypatch, toy, damage
):
    from fmn_patch.families import references

    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path))
    args = (toy, ["a circle"], [0, 1])
    fresh = references.generated_latents(*args, steps=1, guidance=2.0)
    [entry] = list((tmp_path / "fmn-patch" / "references").glob("*.safetensors"))
    bad = DAMAGE[damage](fresh)
    if isinstance(bad, bytes):
        entry.write_bytes(bad)
    else:
        safetensors.torch.save_file(bad, str(entry))
    again = references.generated_latents(*args, steps=1, guidance=2.0)
    assert torch.equal(again, fresh)
    assert torch.equal(safetensors.torch.load_file(str(entry))["latents"], fresh), "the entry is replaced"
    assert "does not verify" in capsys.readouterr().err or damage in ("garbage", "empty")


# ------------------------------------------------------------------------------------------ very long values
LONG = "q" * 10_000


@pytest.mark.parametrize(
    "argv",
    [
        ["edit", "{v}"],
        ["edit", "circle", "--base", "{v}"],
        ["apply", "{v}", "{circle}"],
        ["eval", "toy", "--concept", "{v}"],
        ["edit", "circle", "--device", "{v}"],
        ["merge", "{circle}", "{bob}", "-o", "{v}"],
        ["inspect", "{v}.safetensors"],
    ],
    ids=lambda a: "-".join(x for x in a[:3] if "{" not in x),
)
def test_a_very_long_value_is_shortened_not_the_sentence(capsys, tmp_path, monkeypatch, inputs, argv):
    """The line with a 10,000-character value says all the line with a one-character value says, but the value."""
    monkeypatch.chdir(tmp_path)
    lines = {}
    for value in ("q", LONG):
        code, _, err = run(
            capsys, *[a.format(v=value, circle=inputs["circle"], bob=inputs["bob"]) for a in argv]
        )
        lines[value] = refused(code, err)
    short, long_ = lines["q"], lines[LONG]
    assert len(long_) < 1200, len(long_)
    words = [w for w in short.replace("'q'", " ").split() if "q" not in w]
    missing = [w for w in words if w not in long_]
    # a path the file system cannot even look up says so, its fix first: "too long ...; choose a shorter name"
    assert not missing or "choose a shorter name" in long_, (short, long_[:600])
    assert re.search(r"\d,\d{3} (more )?characters", long_), "the value is shown shortened, with its length"
    assert list(tmp_path.iterdir()) == []


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


@pytest.mark.slow
def test_an_unreachable_hub_in_a_real_process(tmp_path):
    """The whole CLI, HF_ENDPOINT a closed port, the library's real waits between retries: one line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HOME": str(tmp_path / "hf"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-m", "fmn_patch", "pull", "hf://acme/x"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [
        line for line in result.stderr.splitlines() if not line.endswith(" ...")
    ]  # progress: "downloading"
    assert result.returncode == 2 and len(lines) == 1 and "cannot reach the Hub" in lines[0], result.stderr
