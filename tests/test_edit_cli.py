"""``fmnpatch edit``: thin over edit_patch, one-line errors, JSON for scripts."""

from __future__ import annotations

import json

import pytest

from fmn_patch.cli.app import main
from fmn_patch.format import Patch


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def test_edit_help_has_examples(capsys):
    code, out, _ = run(capsys, "edit", "--help")
    assert code == 0 and "Examples" in out and "fmnpatch edit" in out and "--from-file" in out


def test_edit_writes_a_patch_and_reports_json(capsys, pipeline_dirs, tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("# erase these\nbob\n\nalice  # and her\n")
    keep = tmp_path / "keep.txt"
    keep.write_text("a photo of a cat\n")
    out_path = tmp_path / "p.safetensors"
    args = ["edit", "circle=disc", "--from-file", str(concepts), "--preserve-file", str(keep)]
    args += [
        "--base",
        str(pipeline_dirs["sd1"]),
        "--category",
        "object",
        "--rank",
        "2",
        "-o",
        str(out_path),
        "--json",
    ]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    data = json.loads(out)
    assert data["concepts"] == ["circle", "bob", "alice"] and data["rank"] == 2 and 0 <= data["residual"] < 1
    assert set(data["seconds"]) >= {"encode", "solve", "svd", "write"}
    patch = Patch.load(out_path)
    assert patch.info.method == "edit" and patch.info.extra["aliases"]["circle"] == ["disc"]
    code, _, err = run(capsys, *args)  # the file exists now
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no concept given"),
        (["x", "--rank", "0"], "rank=0"),
        (["x", "--from-file", "/nonexistent.txt"], "is not a file"),
        (["x", "--category", "colour"], "unknown category"),
    ],
)
def test_edit_errors_are_one_line(capsys, pipeline_dirs, tmp_path, args, message):
    code, out, err = run(
        capsys, "edit", *args, "--base", str(pipeline_dirs["sd1"]), "-o", str(tmp_path / "p.safetensors")
    )
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1
