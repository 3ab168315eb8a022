"""The CLI: thin over the library, one-line errors with exit code 2, results on stdout, logs on stderr."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_patch, render
from PIL import Image

from fmn_patch.cli.app import main
from fmn_patch.families.base import load_base
from fmn_patch.format import Patch


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


@pytest.fixture
def patch_files(pipeline_dirs, tmp_path):
    pipe = load_base(str(pipeline_dirs["sd1"]))
    return [
        random_patch(pipe, seed=i, concept=c).save(tmp_path / f"{c}.safetensors")
        for i, c in enumerate(["circle", "bob"])
    ]


def test_help_lists_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ["apply", "merge", "export", "inspect", "train", "edit", "eval", "attack", "push", "pull"]:
        assert name in out


@pytest.mark.parametrize("command", ["apply", "merge", "export", "inspect"])
def test_command_help_has_examples(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "Examples" in out and f"fmnpatch {command}" in out


def test_inspect_text_and_json(capsys, patch_files):
    code, out, _ = run(capsys, "inspect", str(patch_files[0]))
    assert code == 0 and "circle (object)" in out and "delta norms" in out
    code, out, _ = run(capsys, "inspect", str(patch_files[0]), "--json")
    data = json.loads(out)
    assert data["concepts"] == [{"name": "circle", "category": "object"}]
    assert data["rank"] == 2 and data["size_bytes"] > 0 and len(data["norms"]) == 14


def test_bad_file_is_one_line_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not really a pickle")
    code, out, err = run(capsys, "inspect", str(bad))
    assert code == 2 and out == ""
    assert err.startswith("fmnpatch: error:") and "pickled" in err and len(err.strip().splitlines()) == 1


def test_debug_switch_shows_traceback(tmp_path):
    with pytest.raises(Exception, match="no such file"):
        main(["--debug", "inspect", str(tmp_path / "missing.safetensors")])


def test_merge_then_apply_output_equals_stack(capsys, patch_files, pipeline_dirs, tmp_path):
    merged = tmp_path / "merged.safetensors"
    code, out, _ = run(
        capsys, "merge", *map(str, patch_files), "-o", str(merged), "-w", "1", "-w", "0.5", "--json"
    )
    assert code == 0 and json.loads(out)["rank"] == 4
    code, out, err = run(capsys, "merge", *map(str, patch_files), "-o", str(merged))
    assert code == 2 and "--overwrite" in err
    fused_dir = tmp_path / "fused"
    code, out, _ = run(capsys, "apply", str(pipeline_dirs["sd1"]), str(merged), "--output", str(fused_dir))
    assert code == 0 and out.strip() == str(fused_dir)

    stacked = load_base(str(pipeline_dirs["sd1"]))
    from fmn_patch.families.stack import apply_patches

    apply_patches(stacked, [Patch.load(p) for p in patch_files], [1.0, 0.5])
    torch.testing.assert_close(render(load_base(str(fused_dir))), render(stacked), rtol=0, atol=1e-4)


def test_apply_prompt_writes_grid(capsys, patch_files, pipeline_dirs, tmp_path):
    grid = tmp_path / "grid.png"
    code, out, _ = run(
        capsys,
        "apply",
        str(pipeline_dirs["sd1"]),
        str(patch_files[0]),
        "--prompt",
        "a photo of bob",
        "--seed",
        "0",
        "--seed",
        "1",
        "--steps",
        "2",
        "--grid",
        str(grid),
    )
    assert code == 0 and out.strip() == str(grid)
    image = Image.open(grid)
    assert image.size[0] > image.size[1]  # 4 columns (base/patched x 2 seeds), 1 row


def test_apply_alone_saves_a_fused_pipeline_to_a_new_default_folder(capsys, tmp_path, monkeypatch):
    """`fmnpatch apply toy PATCH`, the mission's own command line: a loadable fused pipeline, never replacing one."""
    monkeypatch.chdir(tmp_path)
    toy = load_base("toy")
    patch = random_patch(toy, seed=2, concept="circle").save(tmp_path / "forget-circle.safetensors")
    code, out, err = run(capsys, "apply", "toy", str(patch))
    assert code == 0 and out.strip() == "toy-with-forget-circle", err
    assert "load it with DiffusionPipeline.from_pretrained('toy-with-forget-circle')" in err
    from diffusers import DiffusionPipeline

    from fmn_patch.families.base import as_base

    fused = as_base(DiffusionPipeline.from_pretrained(tmp_path / "toy-with-forget-circle"))
    from fmn_patch.families.stack import apply_patches

    apply_patches(toy, [Patch.load(patch)])
    torch.testing.assert_close(render(fused), render(toy), rtol=0, atol=1e-4)  # the fused model is the stack
    code, out, _ = run(capsys, "apply", "toy", str(patch))
    assert code == 0 and out.strip() == "toy-with-forget-circle-2"  # a second run never replaces the first


def test_apply_strict_refuses_other_base(capsys, pipeline_dirs, tmp_path):
    pipe = load_base(str(pipeline_dirs["sd1"]))
    patch = random_patch(pipe).with_info(base_hash="f" * 64, base_model="someone/else")
    path = patch.save(tmp_path / "other.safetensors")
    code, _, err = run(
        capsys, "apply", str(pipeline_dirs["sd1"]), str(path), "--output", str(tmp_path / "o"), "--strict"
    )
    assert code == 2 and "someone/else" in err
    assert not (tmp_path / "o").exists()


def test_apply_unknown_base_is_clear(capsys, patch_files, tmp_path):
    code, _, err = run(capsys, "apply", str(tmp_path), str(patch_files[0]), "--output", str(tmp_path / "o"))
    assert code == 2 and "model_index.json" in err


@pytest.mark.parametrize("text", [b"\xff\xfe{", b"[1, 2]", b'{"transformer": '])
@pytest.mark.parametrize(
    "command", [["train", "circle", "--robust", "2"], ["edit", "circle"], ["train", "circle"]]
)
def test_a_damaged_model_index_is_one_line_before_and_at_loading(capsys, tmp_path, text, command):
    """Not UTF-8, not an object, not JSON: the early family check and the loader both say so in one line."""
    folder = tmp_path / "damaged"
    folder.mkdir()
    (folder / "model_index.json").write_bytes(text)
    out = tmp_path / "p.safetensors"
    code, stdout, err = run(capsys, *command, "--base", str(folder), "-o", str(out))
    errors = [line for line in err.splitlines() if line.startswith("fmnpatch: error:")]
    assert code == 2 and stdout == "" and len(errors) == 1 and "the pipeline folder is damaged" in errors[0]
    assert "Traceback" not in err and not out.exists()


def test_export_writes_kohya(capsys, patch_files, tmp_path):
    out_path = tmp_path / "k.safetensors"
    code, out, _ = run(capsys, "export", str(patch_files[0]), "-o", str(out_path))
    assert code == 0 and out.strip() == str(out_path) and out_path.exists()


def test_bad_input_writes_nothing(capsys, patch_files, pipeline_dirs, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(patch_files[0].read_bytes()[:-64])  # truncated
    out_patch, out_dir = tmp_path / "m.safetensors", tmp_path / "fused"
    code, _, err = run(capsys, "merge", str(patch_files[0]), str(bad), "-o", str(out_patch))
    assert code == 2 and "truncated" in err and not out_patch.exists()
    code, _, err = run(capsys, "apply", str(pipeline_dirs["sd1"]), str(bad), "--output", str(out_dir))
    assert code == 2 and "truncated" in err and not out_dir.exists()
    code, _, err = run(capsys, "export", str(bad), "-o", str(tmp_path / "k.safetensors"))
    assert code == 2 and not (tmp_path / "k.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["bad.safetensors", "circle.safetensors", "bob.safetensors"]
    )
