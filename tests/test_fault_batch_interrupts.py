"""Batch mode under faults (issue 29), interrupted: Ctrl-C anywhere, SIGKILL's leftovers, ``--overwrite`` cut
midway, a full disk, termination and the real SIGINT; each resume ends as one uninterrupted run (the toy model,
the run and its checks: batch_runs).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from batch_runs import (  # noqa: F401  (the fixtures)
    EDIT,
    NAMES,
    RUNS_THE_CLI,
    A,
    append_raw,
    assert_as_reference,
    cli,
    done,
    edit_each,
    leftovers,
    lines_of,
    names,
    one_error,
    reference,
    same_patch,
    stale_temp,
    toy,
    work,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import fmn_patch.cli.edit
import fmn_patch.cli.train
import fmn_patch.files
from fmn_patch.methods.each import MANIFEST, finished, patch_name

# ------------------------------------------------------------------------------------------ interruptions
EVENTS = ("make", "write", "record")


@contextmanager
def interrupt_at(event: str, k: int) -> Iterator[list[bool]]:
    """Ctrl-C at the ``k``-th ``event`` of a run: as a patch is being made, inside its atomic write (its temp file
    written, not yet published), or between the published patch and its manifest line."""
    fired = [False]
    seen = [0]
    module, name = {
        "make": (fmn_patch.cli.edit, "edit_patch"),
        "write": (fmn_patch.files, "_publish"),
        "record": (fmn_patch.methods.each, "append_line"),
    }[event]
    real = getattr(module, name)

    def hooked(*args: object, **kwargs: object) -> object:
        seen[0] += 1
        if seen[0] == k + 1:
            fired[0] = True
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(module, name, hooked)
        yield fired


def killed(folder: Path) -> None:
    """What SIGKILL leaves on top of an interruption: a temp of a dead process and a torn manifest line."""
    stale_temp(patch_name("bob"))(folder)
    append_raw(b'{"concept": "bob", "output": "forget-bob.safetensors", "sta')(folder)


@settings(max_examples=20, **RUNS_THE_CLI)
@given(
    cuts=st.lists(st.tuples(st.sampled_from(EVENTS), st.integers(0, len(NAMES) - 1)), min_size=1, max_size=3),
    kill=st.booleans(),
)
def test_resume_after_ctrl_c_anywhere_ends_as_one_uninterrupted_run(toy, work, names, reference, cuts, kill):
    folder = Path(tempfile.mkdtemp(dir=work)) / "out"
    for event, k in cuts:
        with interrupt_at(event, k) as fired:
            code, _, err = edit_each(names, folder, *(["--resume"] if folder.exists() else []))
        assert "Traceback" not in err, err[-2000:]
        if not fired[0]:
            assert code == 0
            continue
        there = len(finished(folder) & set(NAMES))
        assert code == 130 and err.strip().splitlines()[-1] == (
            f"fmnpatch: interrupted; {there} of {len(NAMES)} patches written to {folder}, resume with --resume"
        )
        assert leftovers(folder) == []
        if kill:
            killed(folder)
    code, _, err = edit_each(names, folder, "--resume")
    assert code == 0, err[-2000:]
    assert_as_reference(folder, reference)


@settings(max_examples=8, **RUNS_THE_CLI)
@given(event=st.sampled_from(EVENTS), k=st.integers(0, len(NAMES) - 1))
def test_overwrite_keeps_the_old_run_until_the_new_one_ends(toy, work, names, reference, event, k):
    """``--each --overwrite`` over a finished run of other options, Ctrl-C midway: every old patch not yet replaced
    is still there byte for byte with its old line; a resume then ends as one uninterrupted run, and the manifest
    holds the new run's lines only."""
    folder = Path(tempfile.mkdtemp(dir=work)) / "out"
    code, _, err = edit_each(names, folder, "--push", "0.5")  # the old run: other options, other tensors
    assert code == 0, err[-2000:]
    old = {p.name: p.read_bytes() for p in folder.glob("*.safetensors")}
    old_lines = {e["concept"]: e for e in lines_of(folder)}
    with interrupt_at(event, k + (event == "record")) as fired:  # the first line appended is the restart line
        code, _, err = edit_each(names, folder, "--overwrite")
    assert fired[0] and code == 130 and "Traceback" not in err, err[-2000:]
    assert leftovers(folder) == []
    replaced = finished(folder)
    for concept in set(NAMES) - replaced:
        name = patch_name(concept)
        if (folder / name).read_bytes() == old[name]:  # not replaced yet: still described by its old line
            assert old_lines[concept] in lines_of(folder)
    for concept in replaced:
        same_patch(folder / patch_name(concept), reference / patch_name(concept))
    code, _, err = edit_each(names, folder, "--resume")
    assert code == 0, err[-2000:]
    assert_as_reference(folder, reference)
    assert {e["concept"] for e in lines_of(folder)} == set(NAMES)
    assert all(e not in lines_of(folder) for e in old_lines.values())


def test_a_finished_overwrite_leaves_only_its_own_lines(toy, names, done, reference):
    code, _, err = edit_each(names, done, "--overwrite")
    assert code == 0, err[-2000:]
    assert_as_reference(done, reference)
    assert sorted(e["concept"] for e in lines_of(done)) == sorted(NAMES)


def test_a_full_disk_midway_says_what_was_written(toy, names, reference, tmp_path):
    """The disk fills at the second patch: the one line says that file was not written and the first one was; a
    resume once there is room ends as one uninterrupted run."""
    folder = tmp_path / "out"
    real = fmn_patch.files._publish
    seen = [0]

    def publish(*args: object, **kwargs: object) -> object:
        seen[0] += 1
        if seen[0] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(fmn_patch.files, "_publish", publish)
        code, _, err = edit_each(names, folder)
    line = err.strip().splitlines()[-1]  # after the bar's lines
    assert code == 2 and "Traceback" not in err and line.startswith("fmnpatch: error: cannot write"), err[
        -2000:
    ]
    assert "nothing was written" not in line and line.endswith(
        f"no space left on device; that file was not written (1 of 3 patches were, in {folder}); free some space "
        "or write elsewhere, then resume with --resume"
    )
    assert leftovers(folder) == [] and finished(folder) == {A}
    code, _, err = edit_each(names, folder, "--resume")
    assert code == 0, err[-2000:]
    assert_as_reference(folder, reference)


def test_terminated_says_what_was_written(toy, names, tmp_path):
    folder = tmp_path / "out"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(
            fmn_patch.cli.edit, "edit_patch", _raising(SystemExit(143), fmn_patch.cli.edit.edit_patch, 2)
        )
        code, _, err = edit_each(names, folder)
    assert code == 143 and err.strip().splitlines()[-1] == (
        f"fmnpatch: terminated; 2 of 3 patches written to {folder}, resume with --resume"
    )


def _raising(error: BaseException, real: Callable[..., object], k: int) -> Callable[..., object]:
    seen = [0]

    def hooked(*args: object, **kwargs: object) -> object:
        seen[0] += 1
        if seen[0] == k + 1:
            raise error
        return real(*args, **kwargs)

    return hooked


# ----------------------------------------------------------------------- slow: train, and the real signal
@pytest.mark.slow
def test_train_each_resumed_after_ctrl_c_is_one_uninterrupted_run(toy, names, tmp_path):
    common = ("--base", "toy", "--steps", "1", "--batch-size", "1")
    whole, part = tmp_path / "whole", tmp_path / "part"
    run = ("train", "--from-file", str(names), "--each")
    assert cli(*run, "-o", str(whole), *common)[0] == 0
    with pytest.MonkeyPatch.context() as m:
        m.setattr(
            fmn_patch.cli.train,
            "train_patch",
            _raising(KeyboardInterrupt(), fmn_patch.cli.train.train_patch, 1),
        )
        code, _, err = cli(*run, "-o", str(part), *common)
    assert code == 130 and err.strip().endswith(f"1 of 3 patches written to {part}, resume with --resume")
    code, _, err = cli(*run, "-o", str(part), *common, "--resume")
    assert code == 0, err[-2000:]
    assert_as_reference(part, whole)
    one_error(*edit_each(names, part, "--resume"), "made by 'resteer', this run makes 'edit' patches")


@pytest.mark.slow
def test_sigint_to_the_command_says_what_was_written(tmp_path):
    """The real signal, to a real process: the line counts the patches in the folder, and a resume finishes."""
    import signal
    import time

    from fmn_patch.concepts.bench import load_bench

    concepts = [c.name for c in load_bench("toy").concepts][:12]
    path = tmp_path / "names.txt"
    path.write_text("\n".join(concepts))
    folder = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FMNPATCH_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "fmn_patch",
        "edit",
        "--from-file",
        str(path),
        "--each",
        "-o",
        str(folder),
    ]
    command += ["--base", "toy", *EDIT]
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        manifest = folder / MANIFEST
        if manifest.exists() and manifest.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    if child.returncode == 0:
        pytest.skip("the run finished before the signal")
    there = len(finished(folder) & set(concepts))
    assert child.returncode == 130 and err.strip().splitlines()[-1] == (
        f"fmnpatch: interrupted; {there} of {len(concepts)} patches written to {folder}, resume with --resume"
    )
    assert 2 <= there < len(concepts) and leftovers(folder) == []
    done = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert finished(folder) == set(concepts) and leftovers(folder) == []
