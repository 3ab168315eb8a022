"""``fmnpatch push / pull / search`` and Hub references in the other commands: thin, one-line errors, exit 2.

The real huggingface_hub client talks to the in-process endpoint of ``hub_endpoint``; the offline check runs the
CLI in a fresh process with HF_HUB_OFFLINE=1 in its environment, against a cache laid out by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_patch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from test_cli import run
from test_hub import TOKEN, _populate_cache, hub  # noqa: F401  (the shared fake-Hub fixture)

from fmn_patch.families.export import export_kohya
from fmn_patch.format import Patch
from fmn_patch.hub.card import WEIGHT_NAME


@pytest.fixture
def patch_files(sd1, tmp_path) -> list[Path]:
    return [
        random_patch(sd1, seed=i, concept=c).save(tmp_path / f"{c}.safetensors")
        for i, c in enumerate(["circle", "bob"])
    ]


@pytest.mark.parametrize("command", ["push", "pull", "search"])
def test_help_has_examples(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "Examples" in out and f"fmnpatch {command}" in out


def test_push_search_pull(capsys, hub, patch_files, tmp_path):
    code, out, err = run(capsys, "push", str(patch_files[0]), "acme/forget-circle")
    assert code == 0 and out.strip() == "hf://acme/forget-circle" and "committed" in err
    code, out, _ = run(capsys, "push", str(patch_files[1]), "acme/forget-bob", "--revision", "v1", "--json")
    pushed = json.loads(out)
    assert (
        pushed["ref"] == "hf://acme/forget-bob@v1"
        and pushed["pinned"] == f"hf://acme/forget-bob@{pushed['commit']}/{WEIGHT_NAME}"
    )

    code, out, _ = run(capsys, "search")
    assert code == 0 and "hf://acme/forget-circle" in out and "forgets circle (object)" in out
    code, out, _ = run(capsys, "search", "circle", "--category", "object", "--json")
    (found,) = json.loads(out)["results"]
    assert found["ref"] == "hf://acme/forget-circle" and found["concepts"] == [
        {"name": "circle", "category": "object"}
    ]
    code, _, err = run(capsys, "search", "nothing-like-this")
    assert code == 0 and "no community patches found" in err

    code, out, err = run(capsys, "pull", "acme/forget-bob@v1", "-o", str(tmp_path / "pulled.safetensors"))
    assert code == 0 and out.strip() == str(tmp_path / "pulled.safetensors")
    assert (
        "verified hf://acme/forget-bob@" in err and "forgets bob (object)" in err and "made for base" in err
    )
    assert (tmp_path / "pulled.safetensors").read_bytes() == patch_files[1].read_bytes()
    code, out, _ = run(capsys, "pull", "hf://acme/forget-circle", "--json")
    data = json.loads(out)
    assert data["concepts"] == [{"name": "circle", "category": "object"}] and data["size_bytes"] > 0
    assert data["pinned"].startswith("hf://acme/forget-circle@") and data["pinned"].endswith(
        f"/{WEIGHT_NAME}"
    )


def test_push_with_grid_and_card_options(capsys, hub, patch_files, tmp_path):
    from PIL import Image

    grid = tmp_path / "preview.png"
    Image.new("RGB", (4, 4)).save(grid)
    code, _, _ = run(
        capsys, "push", str(patch_files[0]), "acme/x", "--grid", str(grid), "--base-model", "acme/base",
        "--license", "openrail", "--private",
    )  # fmt: skip
    repo = hub.repos["acme/x"]
    data = ModelCard(repo.files("main")["README.md"].decode()).data.to_dict()
    assert code == 0 and repo.private and data["base_model"] == "acme/base" and data["license"] == "openrail"
    code, _, err = run(capsys, "push", str(patch_files[0]), "acme/y", "--grid", str(tmp_path / "none.png"))
    assert code == 2 and "grid image" in err and "does not exist" in err


def test_hub_references_work_in_other_commands(capsys, hub, patch_files, tmp_path):
    for path, name in zip(patch_files, ["circle", "bob"], strict=True):
        assert run(capsys, "push", str(path), f"acme/forget-{name}")[0] == 0
    merged = tmp_path / "merged.safetensors"
    code, _, err = run(capsys, "merge", "hf://acme/forget-circle", "hf://acme/forget-bob", "-o", str(merged))
    assert code == 0, err
    assert Patch.load(merged).rank == 4
    kohya = tmp_path / "kohya.safetensors"
    code, _, err = run(capsys, "export", "hf://acme/forget-bob", "-o", str(kohya))
    assert code == 0, err
    expected = export_kohya(Patch.load(patch_files[1]), tmp_path / "expected.safetensors")
    got, want = load_file(kohya), load_file(expected)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_inspect_a_hub_reference(capsys, hub, patch_files):
    run(capsys, "push", str(patch_files[0]), "acme/forget-circle")
    code, out, _ = run(capsys, "inspect", "hf://acme/forget-circle", "--json")
    assert code == 0 and json.loads(out)["concepts"] == [{"name": "circle", "category": "object"}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pull", "acme/nope"], "hf://acme/nope: no such repo"),
        (["pull", "hf://acme/forget-circle/other.safetensors"], "has no file 'other.safetensors'"),
        (["pull", "acme/forget-circle@nope"], "no such revision"),
        (["merge", "hf://acme/nope", "hf://acme/forget-circle", "-o", "m.safetensors"], "no such repo"),
        (["pull", "hf://acme"], "is not a Hub reference; write hf://ORG/NAME"),
        (["pull", "acme/x..y"], "is not a Hub reference; write hf://ORG/NAME[@REVISION][/FILE.safetensors]"),
        (["search", "--category", "celebrity"], "unknown category 'celebrity'"),
    ],
)
def test_errors_are_one_line_exit_2(capsys, hub, patch_files, args, message):
    run(capsys, "push", str(patch_files[0]), "acme/forget-circle")
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("fmnpatch: error:") and message in err and len(err.strip().splitlines()) == 1


def test_not_logged_in_is_one_line(capsys, hub, patch_files, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    code, out, err = run(capsys, "push", str(patch_files[0]), "acme/forget-circle")
    *progress, error = err.strip().splitlines()
    assert (
        code == 2
        and out == ""
        and error.startswith("fmnpatch: error:")
        and "fmnpatch:" not in "".join(progress)
    )
    assert "hf auth login" in error and "HF_TOKEN" in error


def test_offline_pull_in_a_fresh_process(patch_files, tmp_path):
    """HF_HUB_OFFLINE=1 set in the environment, as a user would: cached pulls work, uncached ones say what to do."""
    cache = tmp_path / "cache"
    _populate_cache(cache, "acme/forget-circle", {WEIGHT_NAME: patch_files[0].read_bytes()})
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "home"),
    }
    env.pop("HF_TOKEN", None)
    calls = [
        ["pull", "acme/forget-circle", "-o", str(tmp_path / "c.safetensors")],
        ["pull", "acme/forget-bob"],
    ]
    script = (
        "import sys\n"
        "from fmn_patch.cli.app import main\n"
        f"for args in {calls!r}:\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        print('exit', e.code, file=sys.stderr, flush=True)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert child.returncode == 0, child.stderr[-2000:]
    lines = [line for line in child.stderr.splitlines() if line.startswith(("exit", "fmnpatch:"))]
    assert lines[0] == "exit 0", child.stderr[-2000:]
    assert (tmp_path / "c.safetensors").read_bytes() == patch_files[0].read_bytes()
    assert (
        "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in lines[1] and lines[2] == "exit 2"
    )
