"""The CLI contract, driven from the typer app: for every command, every option of numeric or path type, each bad
value gives exit 2, one error line on stderr (a usage error also prints the command's usage line first), no
traceback, nothing on stdout, and nothing created.

The options are read from the app itself, so a new numeric or path option is tested, or this file fails until it
says what kind of path the option is (``PATH_ROLES``).
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, get_args, get_origin

import pytest
from conftest import random_patch
from test_cli import run
from test_hub import hub  # noqa: F401  (the in-process Hub, for push, pull and search)

from fmn_patch.cli.app import app
from fmn_patch.families.base import load_base

INT_BAD = ["abc", "1.5", "-1", str(2**70)]
FLOAT_BAD = ["abc", "nan", "inf", "-inf", "1e400", "1e30", "-1e30"]
# What each path option is: an output file (with its suffix), an output folder, an input file or folder.
PATH_ROLES: dict[tuple[str, str], tuple[str, str]] = {
    ("apply", "patches"): ("patch", ""),
    ("apply", "output"): ("out_folder", ""),
    ("apply", "grid"): ("out_file", ".png"),
    ("merge", "patches"): ("patch", ""),
    ("merge", "output"): ("out_file", ".safetensors"),
    ("export", "patch"): ("patch", ""),
    ("export", "output"): ("out_file", ".safetensors"),
    ("inspect", "patch"): ("patch", ""),
    ("edit", "output"): ("out_file", ".safetensors"),
    ("edit", "from_file"): ("in_file", ""),
    ("edit", "preserve_file"): ("in_file", ""),
    ("train", "output"): ("out_file", ".safetensors"),
    ("train", "images"): ("in_folder", ""),
    ("train", "preserve_file"): ("in_file", ""),
    ("train", "from_file"): ("in_file", ""),
    ("correct", "output"): ("out_file", ".safetensors"),
    ("eval", "patches"): ("patch", ""),
    ("eval", "output"): ("out_folder", ""),
    ("attack", "patches"): ("patch", ""),
    ("attack", "lora"): ("in_file", ""),
    ("attack", "images"): ("in_folder", ""),
    ("attack", "out"): ("out_folder", ""),
    ("push", "patch"): ("patch", ""),
    ("push", "grid"): ("in_file", ""),
    ("pull", "output"): ("out_folder", ""),
    ("pull", "cache_dir"): ("out_folder", ""),
}
# Config field names in messages where they differ from the option's name.
ALIASES = {"robust": "robust_rounds", "search_candidates": "max_candidates", "inversion_tokens": "num_tokens"}


def _base_type(annotation: object) -> tuple[type | None, bool]:
    """The scalar type under Annotated / Optional / list, and whether it is a list (a repeatable option)."""
    many = False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        elif origin is list:
            annotation, many = get_args(annotation)[0], True
        else:
            return (annotation if isinstance(annotation, type) else None), many


def options() -> list[tuple[str, str, type, str | None]]:
    """(command, parameter, type, flag) for every int, float and Path parameter of every command."""
    found = []
    for info in app.registered_commands:
        name = info.name or info.callback.__name__
        hints = typing.get_type_hints(info.callback, include_extras=True)
        for param, annotation in hints.items():
            if param == "return":
                continue
            kind, _ = _base_type(annotation)
            if kind in (int, float, Path):
                flag = _flag(annotation, param)
                found.append((name, param, kind, flag))
    return found


def _flag(annotation: object, param: str) -> str | None:
    for meta in get_args(annotation)[1:]:
        decls = [d for d in getattr(meta, "param_decls", None) or () if d.startswith("--")]
        if type(meta).__name__ == "ArgumentInfo":
            return None
        if decls:
            return decls[0]
    return "--" + param.replace("_", "-")


OPTIONS = options()


def test_the_app_has_the_commands_and_options_this_file_knows():
    commands = {c for c, *_ in OPTIONS}
    assert {"apply", "merge", "export", "inspect", "edit", "train", "correct", "eval", "attack"} <= commands
    assert {"push", "pull"} <= commands
    unknown = [(c, p) for c, p, kind, _ in OPTIONS if kind is Path and (c, p) not in PATH_ROLES]
    assert not unknown, f"say what kind of path these are in PATH_ROLES: {unknown}"
    numeric = [(c, p) for c, p, kind, _ in OPTIONS if kind in (int, float)]
    assert len(numeric) >= 35, numeric


@pytest.fixture(scope="module")
def patches(pipeline_dirs, tmp_path_factory) -> tuple[bytes, bytes]:
    pipe = load_base(str(pipeline_dirs["sd1"]))
    folder = tmp_path_factory.mktemp("contract")
    a = random_patch(pipe, seed=1).save(folder / "a.safetensors")
    b = random_patch(pipe, seed=2, concept="bob").save(folder / "b.safetensors")
    return a.read_bytes(), b.read_bytes()


@pytest.fixture
def world(pipeline_dirs, patches, tmp_path, monkeypatch):
    """A working folder with two valid patches, a text file, an image folder and an existing image; the cwd."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "a.safetensors").write_bytes(patches[0])
    (work / "b.safetensors").write_bytes(patches[1])
    (work / "words.txt").write_text("circle\n")
    (work / "pictures").mkdir()
    (work / "notes.txt").write_text("not a patch, not a folder")
    (work / "exists.png").write_bytes(b"an existing image")
    return {
        "dir": work,
        "a": work / "a.safetensors",
        "b": work / "b.safetensors",
        "base": str(pipeline_dirs["sd1"]),
    }


def valid_args(command: str, w: dict) -> list[str]:
    """A command line that would run, with every output inside the working folder."""
    base, a, b = w["base"], str(w["a"]), str(w["b"])
    return {
        "apply": [base, a, "--prompt", "a circle", "--grid", "g.png"],
        "merge": [a, b, "-o", "m.safetensors"],
        "export": [a, "-o", "k.safetensors"],
        "inspect": [a],
        "edit": ["circle", "-o", "e.safetensors", "--base", base],
        "train": ["circle", "-o", "t.safetensors", "--base", base],
        "correct": ["circle", "--attribute", "colour", "-o", "c.safetensors", "--base", base],
        "eval": [base, "-o", "ev"],
        "attack": [base, "--concept", "circle", "-o", "at"],
        "push": [a, "acme/x"],
        "pull": ["acme/x"],
        "search": ["circle"],
        "ui": ["--no-local-paths"],  # refused values stop it before the server starts
    }[command]


def _replace(args: list[str], flag: str | None, value: str, command: str) -> list[str]:
    """``args`` with the option (or the positional patch argument) set to ``value``."""
    out = list(args)
    if flag is None:  # a positional path: the patch arguments
        if command in ("eval", "attack"):  # optional patches after the base
            return [out[0], value, *out[1:]]
        out[1 if command == "apply" else 0] = value
        return out
    aliases = {flag, "-o"} if flag in ("--output", "--out") else {flag}
    for i, arg in enumerate(out[:-1]):
        if arg in aliases:
            out[i + 1] = value
            return out
    return [*out, flag, value]


def path_cases(role: str, suffix: str) -> list[tuple[str, str]]:
    """(bad value, what the message must name) for a path option of this role; ``{work}`` and ``{a}`` are filled
    in with the working folder and a valid patch file."""
    long_name = "x" * 300 + suffix
    if role == "out_file":
        existing = "{a}" if suffix == ".safetensors" else "{work}/exists" + suffix
        return [
            ("{a}/inside" + suffix, "inside"),
            (long_name, "xxxxxxxxxx"),
            ("{work}/pictures", "pictures"),
            (existing, "exists"),
            ("{work}/out.wrongsuffix", "wrongsuffix"),
        ]
    if role == "out_folder":
        return [("{a}/inside", "inside"), (long_name, "xxxxxxxxxx"), ("{work}/notes.txt", "notes.txt")]
    if role == "in_file":
        return [("{work}/missing.txt", "missing.txt"), ("{work}/pictures", "pictures")]
    if role == "in_folder":
        return [("{work}/missing", "missing"), ("{work}/notes.txt", "notes.txt")]
    assert role == "patch", role
    return [
        ("{work}/missing.safetensors", "missing.safetensors"),
        ("{work}/pictures", "pictures"),
        ("{work}/notes.txt", "notes.txt"),
    ]


def cases() -> list[tuple[str, str, str | None, str, str]]:
    """(command, parameter, flag, bad value, what the message must name) for every numeric and path option."""
    out = []
    for command, param, kind, flag in OPTIONS:
        if kind is int:
            out += [(command, param, flag, v, "") for v in INT_BAD]
        elif kind is float:
            out += [(command, param, flag, v, "") for v in FLOAT_BAD]
        else:
            out += [(command, param, flag, v, e) for v, e in path_cases(*PATH_ROLES[(command, param)])]
    return out


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize(("command", "param", "flag", "value", "expect"), cases())
def test_every_bad_value_is_one_line_exit_2_and_writes_nothing(
    capsys, request, world, command, param, flag, value, expect
):
    if command in ("push", "pull", "search"):
        request.getfixturevalue("hub")  # the in-process Hub: nothing may reach a network, even by mistake
    value = value.format(work=world["dir"], a=world["a"])
    args = _replace(valid_args(command, world), flag, value, command)
    before = _snapshot(world["dir"])
    code, out, err = run(capsys, command, *args)
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("fmnpatch: error:")]
    assert code == 2, (args, err[-500:])
    assert out == "" and "Traceback" not in err
    assert len(errors) == 1 and len(lines) <= 2, err
    if len(lines) == 2:  # a usage error: the usage line, then the error
        assert lines[0].startswith("usage: fmnpatch"), err
    assert _snapshot(world["dir"]) == before, "something was created"
    message = errors[0].lower()
    names = {param, param.replace("_", "-"), param.replace("_", " "), ALIASES.get(param, param)}
    if expect:
        assert expect.lower() in message, (expect, message)
    else:
        assert any(n in message for n in names), (param, message)
