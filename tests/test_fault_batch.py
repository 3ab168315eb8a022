"""Batch mode under faults (issue 29): ``--each`` / ``--resume`` take the manifest as a record to check, not a
promise.

Every case runs the real CLI in this process on the bundled toy model, loaded once for the module (``edit`` at
``--bench none``: a tenth of a second a patch). A damaged folder is a finished run's folder with one thing changed;
the resume either makes the damaged concept again (one ``making ... again`` line each, and the folder ends equal to
an undamaged run's, bit for bit) or refuses in one line with nothing changed. Never is a wrong patch kept.

This module: damaged folders. Interrupted runs are in test_fault_batch_interrupts, names files and bases in
test_fault_batch_inputs; the run, its fixtures and checks in batch_runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from batch_runs import (  # noqa: F401  (the fixtures)
    NAMES,
    RUNS_THE_CLI,
    A,
    B,
    again_lines,
    append_raw,
    assert_as_reference,
    cli,
    done,
    edit_each,
    lines_of,
    names,
    one_error,
    patch_file,
    reference,
    snapshot,
    stale_temp,
    toy,
    work,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from fmn_patch.families.export import export_kohya
from fmn_patch.format import Patch
from fmn_patch.format.header import read_file
from fmn_patch.methods.each import MANIFEST, finished, patch_name


# ------------------------------------------------------------------------------------------ the manifest
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
