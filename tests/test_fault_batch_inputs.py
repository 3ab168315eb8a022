"""Batch mode under faults (issue 29), its inputs: a names file is UTF-8 split on newlines only, its BOM dropped,
anything else refused before any output; a bad base is refused once, before any concept (the run: batch_runs).
"""

from __future__ import annotations

import pytest
from batch_runs import cli, edit_each, names, one_error, patch_file, toy, work  # noqa: F401  (the fixtures)

from fmn_patch.files import read_lines

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
