"""Shared by the fault tests outside the input files (test_fault_outputs, test_fault_hub,
test_fault_environment): a command run in this process, the one error line of a refused run, a folder's
snapshot, and the module's inputs (two real edit patches on the toy model and a copy of the toy pipeline). A
helper module, not a test module: import the fixtures a module uses (pytest registers imported fixtures; the
autouse ``_quiet_phases`` too).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fmn_patch.cli import display
from fmn_patch.cli.app import main

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
