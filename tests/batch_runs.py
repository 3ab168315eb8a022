"""A batch run (``--each``) on the bundled toy model, shared by the batch fault tests (test_fault_batch,
test_fault_batch_interrupts, test_fault_batch_inputs): the CLI in this process, the module's fixtures (the toy
base loaded once, a names file, one uninterrupted reference run and a copy of it to damage), the checks of a
folder against the reference, and the damage the interruption tests reuse. A helper module, not a test module:
import the fixtures a module uses (pytest registers imported fixtures).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase

import fmn_patch.cli.edit
import fmn_patch.cli.train
from fmn_patch.cli.app import main
from fmn_patch.families.base import load_base
from fmn_patch.files import TMP_TAG, temp_path
from fmn_patch.format.header import read_file
from fmn_patch.methods.each import MANIFEST, finished, patch_name

NAMES = ("circle", "square", "bob")
A, B = "circle", "square"  # B is the concept a case damages; A another one
EDIT = ("--bench", "none", "--category", "object", "--rank", "2")


def cli(*args: str) -> tuple[int, str, str]:
    """One CLI run in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code or 0), out.getvalue(), err.getvalue()


def edit_each(names: Path, folder: Path, *extra: str) -> tuple[int, str, str]:
    return cli("edit", "--from-file", str(names), "--each", "-o", str(folder), "--base", "toy", *EDIT, *extra)


@pytest.fixture(scope="module")
def toy() -> Iterator[object]:
    """The toy base, loaded once: the commands get this one for ``--base toy`` (any other is loaded as usual)."""
    base = load_base("toy")
    real = load_base

    def loader(ref: str, **kwargs: object) -> object:
        return base if ref == "toy" else real(ref, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(fmn_patch.cli.edit, "load_base", loader)
        m.setattr(fmn_patch.cli.train, "load_base", loader)
        yield base


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batch")


@pytest.fixture(scope="module")
def names(work: Path) -> Path:
    path = work / "names.txt"
    path.write_text("\n".join(NAMES) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(toy: object, work: Path, names: Path) -> Path:
    """One uninterrupted run: what every damaged, interrupted and resumed folder must end as."""
    folder = work / "reference"
    code, _, err = edit_each(names, folder)
    assert code == 0, err
    return folder


@pytest.fixture
def done(reference: Path, tmp_path: Path) -> Path:
    """A copy of the finished run's folder, to damage."""
    folder = tmp_path / "out"
    shutil.copytree(reference, folder)
    return folder


# ------------------------------------------------------------------------------------------------ checks
def same_patch(a: Path, b: Path) -> None:
    """The same tensors bit for bit, and the same header but for the date and the timings."""
    (ha, ta), (hb, tb) = read_file(a), read_file(b)
    assert ta.keys() == tb.keys()
    assert all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)
    ea, eb = json.loads(ha.pop("fmn_patch.extra")), json.loads(hb.pop("fmn_patch.extra"))
    for header in (ha, hb):
        header.pop("modelspec.date")
    assert ha == hb and untimed(ea) == untimed(eb)


def untimed(value: object) -> object:
    """A header value without its clock readings (keys that name seconds)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if "seconds" not in k}
    return value


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TMP_TAG in p.name or p.name.endswith(".fmnpatch-probe")]


def assert_as_reference(folder: Path, reference: Path) -> None:
    made = sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors")
    assert made == sorted(p.name for p in reference.iterdir() if p.suffix == ".safetensors")
    for name in made:
        same_patch(folder / name, reference / name)
    assert finished(folder) == set(NAMES)
    assert leftovers(folder) == []


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry of the folder: a file's bytes, else its kind (a FIFO is never opened)."""
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p)] = ("link", os.readlink(p))
        elif p.is_file():
            out[str(p)] = p.read_bytes()
        else:
            out[str(p)] = "dir" if p.is_dir() else "other"
    return out


def one_error(code: int, out: str, err: str, needle: str = "") -> str:
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("fmnpatch: error: "), err[-2000:]
    assert needle in lines[0], lines[0]
    return lines[0]


def again_lines(err: str) -> set[str]:
    """The concepts a resume said it makes again."""
    said = [line for line in err.splitlines() if " again: " in line]
    concepts = {line.split("'")[1] for line in said}
    assert len(concepts) == len(said), said  # one line per concept
    return concepts


# ------------------------------------------------------------------------------------------ the manifest
def lines_of(folder: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines() if line.strip()]


def append_raw(data: bytes) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        with (folder / MANIFEST).open("ab") as f:
            f.write(data)

    return mutate


# ----------------------------------------------------------------------------------------------- the files
def patch_file(folder: Path, concept: str) -> Path:
    return folder / patch_name(concept)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def stale_temp(name: str) -> Callable[[Path], None]:
    """What a run killed while writing ``name`` leaves: its temp file, named for a process that is gone."""

    def mutate(folder: Path) -> None:
        tmp = temp_path(folder / name)
        tmp = tmp.with_name(tmp.name.replace(f"-{os.getpid()}.", f"-{dead_pid()}."))
        tmp.write_bytes(b"half a patch")

    return mutate


NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]  # each example runs the CLI: no slow shrinking
RUNS_THE_CLI: dict[str, Any] = dict(
    deadline=None,
    derandomize=True,
    phases=NO_SHRINK,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
