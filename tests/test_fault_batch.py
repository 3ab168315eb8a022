"""Batch mode under faults (issue 29): ``--each`` / ``--resume`` take the manifest as a record to check, not a
promise.

Every case runs the real CLI in this process on the bundled toy model, loaded once for the module (``edit`` at
``--bench none``: a tenth of a second a patch). A damaged folder is a finished run's folder with one thing changed;
the resume either makes the damaged concept again (one ``making ... again`` line each, and the folder ends equal to
an undamaged run's, bit for bit) or refuses in one line with nothing changed. Never is a wrong patch kept.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import fmn_patch.cli.edit
import fmn_patch.cli.train
import fmn_patch.files
from fmn_patch.cli.app import main
from fmn_patch.families.base import load_base
from fmn_patch.families.export import export_kohya
from fmn_patch.files import TMP_TAG, read_lines, temp_path
from fmn_patch.format import Patch
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


def write_lines(folder: Path, lines: list[dict[str, object]]) -> None:
    (folder / MANIFEST).write_text("".join(json.dumps(e) + "\n" for e in lines))


def change_line(of: str, **changes: object) -> Callable[[Path], None]:
    """Set (or, for a value of ``...``, remove) fields of the line of concept ``of``."""

    def mutate(folder: Path) -> None:
        lines = lines_of(folder)
        for entry in lines:
            if entry["concept"] == of:
                for key, value in changes.items():
                    if value is ...:
                        entry.pop(key, None)
                    else:
                        entry[key] = value
        write_lines(folder, lines)

    return mutate


def append_raw(data: bytes) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        with (folder / MANIFEST).open("ab") as f:
            f.write(data)

    return mutate


def append_line_for(of: str, **changes: object) -> Callable[[Path], None]:
    """A later line: the line of concept ``of``, changed."""

    def mutate(folder: Path) -> None:
        entry = next(e for e in lines_of(folder) if e["concept"] == of)
        append_raw((json.dumps({**entry, **changes}) + "\n").encode())(folder)

    return mutate


def all_lines(**changes: object) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        for concept in NAMES:
            change_line(concept, **changes)(folder)

    return mutate


# ----------------------------------------------------------------------------------------------- the files
def patch_file(folder: Path, concept: str) -> Path:
    return folder / patch_name(concept)


def replace_file(concept: str, data: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = patch_file(folder, concept)
        path.write_bytes(data(path.read_bytes()))

    return mutate


def copy_of(source: str, target: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        shutil.copyfile(patch_file(folder, source), patch_file(folder, target))

    return mutate


def swap(a: str, b: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        pa, pb = patch_file(folder, a), patch_file(folder, b)
        tmp = folder / "swap"
        pa.rename(tmp)
        pb.rename(pa)
        tmp.rename(pb)

    return mutate


def header_changed(concept: str, key: str, value: str) -> Callable[[Path], None]:
    """The same tensors (their hash still holds) under a header that says something else."""

    def mutate(folder: Path) -> None:
        path = patch_file(folder, concept)
        header, tensors = read_file(path)
        safetensors.torch.save_file(tensors, str(path), metadata={**header, key: value})

    return mutate


def kind_of_file(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = patch_file(folder, B)
        path.unlink()
        make(path)

    return mutate


def as_kohya(folder: Path) -> None:
    path = patch_file(folder, B)
    export_kohya(Patch.load(path), path, overwrite=True)


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


def symlink_to_reference(folder: Path) -> None:
    path = patch_file(folder, B)
    target = folder.parent / "elsewhere.safetensors"
    shutil.copyfile(path, target)
    path.unlink()
    path.symlink_to(target)


RECORD = ("concepts", "method", "base_hash", "config", "tensor_hash", "file_hash")  # what a done line records

# Each case: how the finished folder is damaged, the concepts the resume must make again (each with its line), and
# any it must make quietly (a line that never said done).
REDONE: list[tuple[str, Callable[[Path], None], set[str], set[str]]] = [
    ("patch-missing", lambda f: patch_file(f, B).unlink(), {B}, set()),
    ("output-absolute", change_line(B, output="/etc/passwd"), {B}, set()),
    ("output-absolute-inside", lambda f: change_line(B, output=str(patch_file(f, B)))(f), {B}, set()),
    ("output-dotdot", change_line(B, output="../reference/forget-square.safetensors"), {B}, set()),
    ("output-other-concept", change_line(B, output=patch_name(A)), {B}, set()),
    ("output-nul", change_line(B, output="forget-square.safetensors\x00"), {B}, set()),
    ("later-line-other-output", append_line_for(B, output=patch_name(A)), {B}, set()),
    ("tensor-hash", change_line(B, tensor_hash="0" * 64), {B}, set()),
    ("concepts", change_line(B, concepts=[A]), {B}, set()),
    ("concepts-empty", change_line(B, concepts=[]), {B}, set()),
    ("config-digest", change_line(B, config="0" * 64), {B}, set()),
    (
        "older-fmnpatch",
        change_line(B, concepts=..., method=..., base_hash=..., config=..., tensor_hash=...),
        {B},
        set(),
    ),
    ("older-fmnpatch-all", all_lines(tensor_hash=..., options=...), set(NAMES), set()),
    ("one-record-field-gone", change_line(B, config=...), {B}, set()),
    ("status-failed", change_line(B, status="failed", error="x"), set(), {B}),
    ("truncated", replace_file(B, lambda b: b[: len(b) // 2]), {B}, set()),
    ("truncated-header", replace_file(B, lambda b: b[:20]), {B}, set()),
    ("garbage", replace_file(B, lambda b: os.urandom(len(b))), {B}, set()),
    ("empty", replace_file(B, lambda b: b""), {B}, set()),
    ("pickle", replace_file(B, lambda b: b"\x80\x04" + b[2:]), {B}, set()),
    ("one-bit-flipped", replace_file(B, lambda b: b[:-9] + bytes([b[-9] ^ 1]) + b[-8:]), {B}, set()),
    ("copy-of-another", copy_of(A, B), {B}, set()),
    ("swapped", swap(A, B), {A, B}, set()),
    (
        "header-concepts",
        header_changed(B, "fmn_patch.concepts", '[{"name": "circle", "category": "object"}]'),
        {B},
        set(),
    ),
    ("header-method", header_changed(B, "fmn_patch.method", "resteer"), {B}, set()),
    ("header-base", header_changed(B, "fmn_patch.base_hash", "0" * 64), {B}, set()),
    ("header-config", header_changed(B, "fmn_patch.config", '{"rank": 3}'), {B}, set()),
    ("header-date", header_changed(B, "modelspec.date", "2001-01-01T00:00:00+00:00"), {B}, set()),
    ("file-hash", change_line(B, file_hash="0" * 64), {B}, set()),
    ("kohya-export", as_kohya, {B}, set()),
    ("fifo", kind_of_file(lambda p: os.mkfifo(p)), {B}, set()),
    ("link", symlink_to_reference, {B}, set()),
    ("torn-line", append_raw(b'{"concept": "square", "output": "forget-sq'), set(), set()),
    ("torn-utf8", append_raw('{"concept": "caf\u00e9'.encode()[:-1]), set(), set()),
    ("blank-lines", append_raw(b"\n\n  \n"), set(), set()),
    ("unlisted-concept", append_line_for(B, concept="star", output=patch_name("star")), set(), set()),
    ("stale-temp", stale_temp(patch_name(B)), set(), set()),
    ("stale-temp-unlisted", stale_temp("forget-star.safetensors"), set(), set()),
    ("stale-temp-manifest", stale_temp(MANIFEST), set(), set()),
]


@pytest.mark.parametrize(("mutate", "again", "quietly"), [c[1:] for c in REDONE], ids=[c[0] for c in REDONE])
def test_a_damaged_entry_is_made_again_and_said(toy, names, done, reference, mutate, again, quietly):
    mutate(done)
    code, out, err = edit_each(names, done, "--resume")
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert again_lines(err) == again
    assert set(out.split()) == {str(patch_file(done, c)) for c in again | quietly}
    assert_as_reference(done, reference)


def test_a_folder_where_a_patch_goes_is_not_taken_for_it(toy, names, done):
    """Made again, and since a folder is not replaced, recorded as failed: never counted as done."""
    kind_of_file(lambda p: p.mkdir())(done)
    code, _, err = edit_each(names, done, "--resume")
    assert code == 2 and "Traceback" not in err and again_lines(err) == {B}
    assert err.strip().splitlines()[-1].startswith("fmnpatch: error: 1 of 1 concepts failed")
    assert patch_file(done, B).is_dir() and finished(done) == {A, "bob"}


# Refused: what fmnpatch never writes (wrong JSON types, not UTF-8, not a file), and a manifest of another base,
# method or options. The expected JSON type of each field, independent of the code under test:
TYPES: dict[str, tuple[type, ...]] = {
    "concept": (str,),
    "output": (str,),
    "status": (str,),
    "concepts": (list,),
    "method": (str,),
    "base_hash": (str, type(None)),
    "config": (str,),
    "tensor_hash": (str,),
    "file_hash": (str,),
    "options": (dict,),
}
WRONG = [[1], 7, 2.5, None, {"a": 1}, True, "text"]
REFUSED: list[tuple[str, Callable[[Path], None], str]] = [
    (f"{key}-{type(value).__name__}", change_line(B, **{key: value}), repr(key))
    for key, types in TYPES.items()
    for value in WRONG
    if not isinstance(value, types)
]
REFUSED += [
    (f"{key}-missing", change_line(B, **{key: ...}), repr(key)) for key in ("concept", "output", "status")
]
REFUSED += [
    (f"line-{type(v).__name__}", append_raw((json.dumps(v) + "\n").encode()), "not a JSON object")
    for v in ([], [1, 2], "done", 3, None, True)
]
REFUSED += [
    ("status-unknown", change_line(B, status="pending"), "is not done or failed"),
    ("concepts-not-text", change_line(B, concepts=[1]), "'concepts'"),
    ("deep-nesting", append_raw(b"[" * 100_000 + b"]" * 100_000 + b"\n"), "nests too deep"),
    ("huge-integer", append_raw(b'{"concept": "star", "seconds": ' + b"7" * 5000 + b"}\n"), "out of range"),
    ("method", change_line(B, method="resteer"), "made by 'resteer'"),
    ("base", change_line(B, base_hash="0" * 64), "another base"),
    ("options", change_line(B, options={"rank": 16}), "other options"),
]


def _not_utf8(folder: Path) -> None:
    path = folder / MANIFEST
    path.write_bytes(path.read_bytes().replace(b'"square"', b'"squ\xe9re"', 1))


def _manifest_as(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        (folder / MANIFEST).unlink()
        make(folder / MANIFEST)

    return mutate


REFUSED += [
    ("not-utf8", _not_utf8, "is not UTF-8 text"),
    ("not-utf8-midline", append_raw(b'{"concept": "\xff\xfe", "output": "x", "status": "done"}\n'), "UTF-8"),
    ("manifest-folder", _manifest_as(lambda p: p.mkdir()), "is not a file"),
    ("manifest-fifo", _manifest_as(lambda p: os.mkfifo(p)), "is not a file"),
    ("manifest-broken-link", _manifest_as(lambda p: p.symlink_to(p.parent / "gone")), "is not a file"),
]


@pytest.mark.parametrize(("mutate", "needle"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_manifest_fmnpatch_did_not_write_is_refused_in_one_line(toy, names, done, mutate, needle):
    mutate(done)
    before = snapshot(done)
    one_error(*edit_each(names, done, "--resume"), needle)
    assert snapshot(done) == before


def test_a_manifest_of_other_options_another_method_or_another_base_is_refused(toy, names, done, tmp_path):
    before = snapshot(done)
    one_error(*edit_each(names, done, "--resume", "--rank", "3"), "rank 2 then, 3 now")
    one_error(*edit_each(names, done, "--resume", "--anchor", "a shape"), "anchor null then")
    one_error(
        *cli("train", "--from-file", str(names), "--each", "-o", str(done), "--base", "toy", "--resume"),
        "made by 'edit', this run makes 'resteer' patches",
    )
    assert snapshot(done) == before
    # the same run on a base one weight away: its patches are refused as done on the toy
    other = tmp_path / "other"
    weight = next(iter(toy.family.adapters.targets().values())).weight  # type: ignore[attr-defined]
    kept = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(1e-3)
        assert edit_each(names, other)[0] == 0
    finally:
        with torch.no_grad():
            weight.copy_(kept)
    before = snapshot(other)
    one_error(*edit_each(names, other, "--resume"), "made on another base")
    assert snapshot(other) == before


NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]  # each example runs the CLI: no slow shrinking
RUNS_THE_CLI: dict[str, Any] = dict(
    deadline=None,
    derandomize=True,
    phases=NO_SHRINK,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(max_examples=25, **RUNS_THE_CLI)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from([MANIFEST, *map(patch_name, NAMES)]),
            st.floats(0, 1, exclude_max=True),
            st.sampled_from(["flip", "drop", "insert"]),
            st.integers(1, 255),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_any_byte_changed_is_made_again_or_refused_never_kept(toy, work, names, reference, edits):
    """Bytes flipped, dropped or inserted anywhere in the manifest or the patches: the resume ends with the
    reference patches (what changed made again) or refuses in one line with nothing changed."""
    folder = Path(tempfile.mkdtemp(dir=work)) / "out"
    shutil.copytree(reference, folder)
    for name, where, how, byte in edits:
        data = bytearray((folder / name).read_bytes())
        at = int(where * len(data))
        if how == "flip":
            data[at] ^= byte
        elif how == "drop":
            del data[at]
        else:
            data.insert(at, byte)
        (folder / name).write_bytes(bytes(data))
    before = snapshot(folder)
    code, out, err = edit_each(names, folder, "--resume")
    assert "Traceback" not in err, err[-2000:]
    if code == 2:
        one_error(code, out, err)
        assert snapshot(folder) == before
    else:
        assert code == 0, err[-2000:]
        assert_as_reference(folder, reference)


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


# ------------------------------------------------------------------------------------------- names files
SEPARATORS = ["\u2028", "\u2029", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\x85", "\r"]


@pytest.mark.parametrize("sep", SEPARATORS, ids=[f"U+{ord(s):04X}" for s in SEPARATORS])
def test_a_names_file_splits_on_newlines_only(tmp_path, sep):
    path = tmp_path / "names.txt"
    path.write_bytes(f"circle{sep}square\nbob\r\n".encode())
    assert read_lines(path) == [f"circle{sep}square", "bob"]


@pytest.mark.parametrize(
    "data",
    [
        b"\xef\xbb\xbfcircle\nsquare\n",
        b"\xef\xbb\xbfcircle\r\nsquare\r\n",
        b"circle\r\nsquare",
        b"\xef\xbb\xbf# shapes\r\n\r\n circle \r\nsquare # the other\n",
    ],
    ids=["bom", "bom-crlf", "crlf-no-final-newline", "bom-comments-blanks"],
)
def test_a_names_file_is_utf8_with_its_bom_dropped(toy, tmp_path, data):
    path = tmp_path / "names.txt"
    path.write_bytes(data)
    assert read_lines(path) == ["circle", "square"]
    folder = tmp_path / "out"
    code, out, err = edit_each(path, folder)
    assert code == 0, err[-2000:]
    assert out.split() == [str(patch_file(folder, c)) for c in ("circle", "square")]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ("circle\nsquare\n".encode("utf-16"), "is not UTF-8 text"),
        ("caf\u00e9\n".encode("latin-1"), "is not UTF-8 text"),
        (b"\xef\xbb\xbf\n# only a comment\n", "no concept given"),
    ],
    ids=["utf16", "latin1", "bom-only"],
)
def test_a_names_file_that_is_not_utf8_is_refused_before_any_output(toy, tmp_path, data, needle):
    path = tmp_path / "names.txt"
    path.write_bytes(data)
    one_error(*edit_each(path, tmp_path / "out"), needle)
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------------- the base
@pytest.mark.parametrize("how", ["missing", "file", "empty-folder", "env-missing", "env-file"])
@pytest.mark.parametrize("command", ["edit", "train"])
def test_a_bad_base_is_refused_once_before_any_concept(names, tmp_path, monkeypatch, how, command):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    bad = {"missing": tmp_path / "nope", "file": tmp_path / "file", "empty-folder": tmp_path / "empty"}[
        how.removeprefix("env-") if how.startswith("env-") else how
    ]
    args = [command, "--from-file", str(names), "--each", "-o", str(tmp_path / "out")]
    if how.startswith("env-"):
        monkeypatch.setenv("FMNPATCH_BASE", str(bad))
    else:
        args += ["--base", str(bad)]
    one_error(*cli(*args), str(bad).split("/")[-1])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ slow: the rest
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
