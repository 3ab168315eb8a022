"""Conformance with the tools people use: huggingface_hub's hf:// syntax, the ModelSpec hash, kohya headers,
files the UIs load, headers without local paths, the default base and output, declared dependencies.

The Hub is the in-process endpoint of ``hub_endpoint`` driven by the real huggingface_hub client.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
import struct
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import tomllib
import torch
from conftest import random_patch, render
from huggingface_hub import HfFileSystem, ModelCard
from lockfile import canonical, differences, installed, locked
from packaging.requirements import Requirement
from packaging.version import Version
from test_cli import run
from test_hub import TOKEN, hub  # noqa: F401  (the in-process Hub)

from fmn_patch.errors import PatchFileError
from fmn_patch.families.base import load_base
from fmn_patch.families.export import export_kohya
from fmn_patch.families.stack import apply_patches, remove_patches
from fmn_patch.format import Patch
from fmn_patch.format.header import LORA_ADAPTER_METADATA_KEY, tensor_hash
from fmn_patch.format.kohya import kohya_path
from fmn_patch.hub import pull, push
from fmn_patch.hub.card import WEIGHT_NAME, local_paths
from fmn_patch.testing.tiny import build_sd

ROOT = Path(__file__).resolve().parents[1]


def spec_hash(path: Path) -> str:
    """ModelSpec's hash_sha256, written here from its definition: SHA-256 of the file after the header."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return "0x" + hashlib.sha256(data[8 + n :]).hexdigest()


def header_of(path: Path) -> dict[str, str]:
    with safetensors.safe_open(str(path), "pt") as f:
        return f.metadata()


# ---------------------------------------------------------------------------------------------- hf:// URIs
def test_hf_uri_with_revision_and_file_works_in_every_command_and_in_hffilesystem(
    capsys, hub, pipeline_dirs, sd1, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    first = random_patch(sd1, seed=1, concept="circle").save(tmp_path / "circle.safetensors")
    second = random_patch(sd1, seed=2, concept="bob").save(tmp_path / "bob.safetensors")
    pushed = push(first, "acme/celebs@dev/circle.safetensors")
    push(second, "acme/celebs@dev/bob.safetensors")
    uri = "hf://acme/celebs@dev/circle.safetensors"
    other = "hf://acme/celebs@dev/bob.safetensors"
    base = str(pipeline_dirs["sd1"])
    for args in (
        ["inspect", uri, "--json"],
        ["export", uri, "-o", "k.safetensors"],
        ["merge", uri, other, "-o", "m.safetensors"],
        ["apply", base, uri, other, "-o", "fused"],
        ["pull", uri, "-o", "pulled.safetensors"],
        [
            "eval",
            base,
            uri,
            "--bench",
            "toy",
            "--concept",
            "circle",
            "--seeds",
            "1",
            "--steps",
            "1",
            "-o",
            "ev",
        ],
    ):
        code, _, err = run(capsys, *args)
        assert code == 0, (args, err[-800:])
    assert Path("pulled.safetensors").read_bytes() == first.read_bytes()
    # the same URI opens with huggingface_hub's file system (the syntax is the library's own)
    with HfFileSystem().open(uri, "rb") as f:
        assert f.read() == first.read_bytes()
    pinned = f"hf://acme/celebs@{pushed.commit}/circle.safetensors"
    assert str(pushed.pinned) == pinned and HfFileSystem().cat_file(pinned) == first.read_bytes()


def test_the_old_form_still_works_with_a_deprecation_line(capsys, hub, sd1, tmp_path):
    path = random_patch(sd1).save(tmp_path / "p.safetensors")
    push(path, "acme/old@v1/p.safetensors")
    code, out, err = run(capsys, "inspect", "hf://acme/old/p.safetensors@v1", "--json")
    warnings = [line for line in err.splitlines() if line.startswith("fmnpatch: warning:")]
    assert code == 0 and json.loads(out)["concepts"][0]["name"] == "circle"
    assert len(warnings) == 1 and "write hf://acme/old@v1/p.safetensors" in warnings[0]


# ------------------------------------------------------------------------------------------- the hashes
@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_modelspec_hash_of_native_and_kohya_files_follows_the_spec(pipeline_dirs, tmp_path, kind):
    base = load_base(str(pipeline_dirs[kind]))
    native = random_patch(base).save(tmp_path / "p.safetensors")
    kohya = export_kohya(Patch.load(native), tmp_path / "p.kohya.safetensors")
    for path in (native, kohya):
        header = header_of(path)
        assert header["modelspec.hash_sha256"] == spec_hash(path), path.name
        assert header["fmn_patch.tensor_hash"] == tensor_hash(safetensors.torch.load_file(str(path)))
    assert header_of(kohya)["modelspec.hash_sha256"] != header_of(native)["modelspec.hash_sha256"]
    assert header_of(native)["modelspec.implementation"] == "diffusers"  # PEFT keys: diffusers' names
    expected = "https://github.com/Stability-AI/generative-models" if kind == "sdxl" else "diffusers"
    assert header_of(kohya)["modelspec.implementation"] == expected  # SGM block names for SDXL


def test_flux_kohya_export_has_its_own_hashes_bfl_names_and_reads_back_bit_for_bit(
    capsys, mmdit_dirs, tmp_path
):
    base = load_base(str(mmdit_dirs["flux"]))
    patch = random_patch(base, seed=3)
    native = patch.save(tmp_path / "p.safetensors")
    kohya = export_kohya(Patch.load(native), kohya_path(native))
    for path in (native, kohya):
        assert header_of(path)["modelspec.hash_sha256"] == spec_hash(path), path.name
    header = header_of(kohya)
    assert (
        header["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"
    )  # double_blocks_N
    assert (
        header["ss_base_model_version"] == "flux1"
        and header_of(native)["modelspec.implementation"] == "diffusers"
    )
    loaded = Patch.load(kohya, require_hash=True)
    assert loaded.verified and loaded.form == "kohya" and loaded.modules == patch.modules
    for module, (a, b) in patch.factors.items():
        assert torch.equal(loaded.factors[module][0], a) and torch.equal(loaded.factors[module][1], b), module
    code, _, err = run(capsys, "apply", str(mmdit_dirs["flux"]), str(kohya), "-o", str(tmp_path / "fused"))
    assert code == 0, err[-800:]
    # a fused qkv LoRA that also moves q is no text K/V patch: refused, not read as one
    tensors = safetensors.torch.load_file(str(kohya))
    up = next(k for k in tensors if k.endswith("lora_up.weight"))
    tensors[up][0, 0] = 1.0
    touched = tmp_path / "q.safetensors"
    safetensors.torch.save_file(tensors, str(touched), metadata=header)
    with pytest.raises(PatchFileError, match="not all cross-attention key/value projections"):
        Patch.load(touched)


def test_a_tampered_file_fails_either_hash(sd1, tmp_path):
    path = random_patch(sd1).save(tmp_path / "p.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(PatchFileError, match="tensor hash mismatch"):
        Patch.load(path)


def test_files_of_format_1_still_load_checked_against_their_hash(sd1, tmp_path):
    """fmn-patch 0.1 wrote the project's hash under modelspec.hash_sha256 and no fmn_patch.tensor_hash."""
    patch = random_patch(sd1)
    header = patch.header()
    del header["fmn_patch.tensor_hash"]
    header["fmn_patch.format_version"] = "1"
    header["modelspec.hash_sha256"] = "0x" + patch.tensor_hash()
    old = tmp_path / "old.safetensors"
    safetensors.torch.save_file(patch.state_dict(), str(old), metadata=header)
    loaded = Patch.load(old, require_hash=True)
    assert loaded.verified and loaded.tensor_hash() == patch.tensor_hash()
    resaved = header_of(loaded.save(tmp_path / "new.safetensors"))
    assert resaved["fmn_patch.format_version"] == "2" and resaved["modelspec.hash_sha256"] == spec_hash(
        tmp_path / "new.safetensors"
    )
    data = bytearray(old.read_bytes())
    data[-1] ^= 1
    old.write_bytes(bytes(data))
    with pytest.raises(PatchFileError, match="tensor hash mismatch"):
        Patch.load(old)


# -------------------------------------------------------------------------------------------- kohya files
def test_kohya_headers_tell_the_uis_the_base(pipeline_dirs, tmp_path):
    found = {}
    for kind in ("sd1", "sd2", "sdxl"):
        path = export_kohya(
            random_patch(load_base(str(pipeline_dirs[kind]))), tmp_path / f"{kind}.safetensors"
        )
        found[kind] = header_of(path)
    assert (
        found["sd2"]["ss_v2"] == "True"
    )  # without it AUTOMATIC1111 files an SD-2.x LoRA as SD1 and hides it
    assert (
        found["sd2"]["ss_v_parameterization"] == "True" and found["sd2"]["ss_base_model_version"] == "sd_v2_v"
    )
    assert found["sd2"]["modelspec.prediction_type"] == "v"
    assert found["sd1"]["ss_v2"] == "False" and found["sd1"]["ss_base_model_version"] == "sd_v1"
    assert found["sdxl"]["ss_base_model_version"] == "sdxl_base_v1-0" and found["sdxl"]["ss_v2"] == "False"


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_a_kohya_export_loads_back_and_matches_diffusers_own_kohya_loader(
    capsys, pipeline_dirs, tmp_path, kind
):
    folder = str(pipeline_dirs[kind])
    base = load_base(folder)
    patch = random_patch(base, seed=6)
    kohya = export_kohya(patch, tmp_path / "k.kohya.safetensors")
    loaded = Patch.load(kohya, require_hash=True)
    assert loaded.verified and loaded.form == "kohya" and loaded.modules == patch.modules
    for m in patch.modules:
        torch.testing.assert_close(loaded.delta(m), patch.delta(m), rtol=0, atol=0)
    ours = load_base(folder)
    apply_patches(ours, [loaded], strict=True)
    stock = load_base(folder)
    stock.pipe.load_lora_weights(str(kohya))  # diffusers' own kohya conversion
    torch.testing.assert_close(render(ours), render(stock), rtol=0, atol=1e-5)
    code, out, _ = run(capsys, "inspect", str(kohya))
    assert code == 0 and "ComfyUI (models/loras), AUTOMATIC1111" in out


def test_inspect_and_completion_lines_say_which_file_to_use_where(capsys, pipeline_dirs, sd1, tmp_path):
    path = random_patch(sd1).save(tmp_path / "p.safetensors")
    code, out, _ = run(capsys, "inspect", str(path))
    assert code == 0 and "use with     diffusers (pipe.load_lora_weights) and fmnpatch" in out
    assert "fmnpatch export FILE -o FILE.kohya.safetensors" in out
    out_path = tmp_path / "e.safetensors"
    code, _, err = run(
        capsys,
        "edit",
        "circle",
        "--base",
        str(pipeline_dirs["sd1"]),
        "--category",
        "object",
        "-o",
        str(out_path),
    )
    assert code == 0 and f"fmnpatch export {out_path} -o {tmp_path / 'e.kohya.safetensors'}" in err


def test_an_sd3_patch_is_said_to_load_in_comfyui_as_it_is(capsys, mmdit_dirs, tmp_path):
    """SD3 has no kohya form (diffusers has no SD3 kohya converter); ComfyUI reads the native transformer.* keys."""
    path = random_patch(load_base(str(mmdit_dirs["sd3"]))).save(tmp_path / "p.safetensors")
    code, out, _ = run(capsys, "inspect", str(path))
    line = next(x for x in out.splitlines() if x.startswith("use with"))
    assert code == 0 and "ComfyUI (models/loras)" in line and "export" not in line


def test_adapter_metadata_is_passed_to_diffusers(sd1, monkeypatch):
    patch = random_patch(sd1)
    seen = []
    denoiser = sd1.family.adapters.denoiser
    real = denoiser.load_lora_adapter

    def spy(*args, **kwargs):
        seen.append(kwargs.get("metadata"))
        return real(*args, **kwargs)

    monkeypatch.setattr(denoiser, "load_lora_adapter", spy)
    names = apply_patches(sd1, [patch])
    config = denoiser.peft_config[names[0]]
    remove_patches(sd1, names)
    assert seen == [patch.adapter_metadata()]
    assert set(config.target_modules) == set(patch.modules) and config.r == config.lora_alpha == patch.rank
    assert json.loads(patch.header()[LORA_ADAPTER_METADATA_KEY]) == patch.adapter_metadata()


def test_a_patch_under_our_file_name_is_what_stock_diffusers_finds_and_reads(pipeline_dirs, tmp_path):
    """WEIGHT_NAME is the name diffusers looks for in a folder given without ``weight_name``, and the header key
    holding the LoraConfig is the one its loader returns as the adapter's metadata."""
    folder = str(pipeline_dirs["sd1"])
    ours = load_base(folder)
    patch = random_patch(ours, seed=8)
    (tmp_path / "repo").mkdir()
    patch.save(tmp_path / "repo" / WEIGHT_NAME)
    stock = load_base(folder)
    state, _, metadata = stock.pipe.lora_state_dict(str(tmp_path / "repo"), return_lora_metadata=True)
    assert set(state) == set(patch.state_dict()) and metadata == patch.adapter_metadata()
    stock.pipe.load_lora_weights(str(tmp_path / "repo"))  # found by its file name alone
    apply_patches(ours, [patch], strict=True)
    torch.testing.assert_close(render(ours), render(stock), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- the Hub
def test_a_pushed_repo_has_both_files_a_card_naming_them_and_is_found_by_base(capsys, hub, sd1, tmp_path):
    path = random_patch(sd1, concept="bob").save(tmp_path / "forget-bob.safetensors")
    code, _, err = run(capsys, "push", str(path), "acme/forget-bob", "--base-model", "acme/tiny-sd")
    assert code == 0, err
    files = hub.repos["acme/forget-bob"].files("main")
    assert {WEIGHT_NAME, "pytorch_lora_weights.kohya.safetensors", "README.md"} <= set(files)
    kohya = tmp_path / "k.safetensors"
    kohya.write_bytes(files["pytorch_lora_weights.kohya.safetensors"])
    assert Patch.load(kohya, require_hash=True).tensor_hash() == Patch.load(path).tensor_hash()
    card = ModelCard(files["README.md"].decode())
    assert "base_model:adapter:acme/tiny-sd" in card.data.tags and card.data.base_model == "acme/tiny-sd"
    files_section = card.text.split("## Files", 1)[1].split("##", 1)[0]
    assert f"`{WEIGHT_NAME}` | diffusers" in files_section
    assert (
        "`pytorch_lora_weights.kohya.safetensors` | ComfyUI" in files_section
        and "AUTOMATIC1111" in files_section
    )
    code, out, _ = run(capsys, "search", "--base", "acme/tiny-sd", "--json")
    assert code == 0 and [r["repo_id"] for r in json.loads(out)["results"]] == ["acme/forget-bob"]
    code, out, _ = run(capsys, "search", "--base", "acme/other", "--json")
    assert code == 0 and json.loads(out)["results"] == []
    assert pull("acme/forget-bob").filename == WEIGHT_NAME  # the default file, not the kohya export


def test_headers_name_no_local_path_and_push_refuses_one_that_does(capsys, hub, pipeline_dirs, tmp_path):
    folder = pipeline_dirs["sd1"]
    base = load_base(str(folder.resolve()))  # loaded by an absolute path
    patch = random_patch(base)
    assert patch.info.base_model == folder.name and patch.info.base_hash == base.family.identity.target_hash()
    path = patch.save(tmp_path / "p.safetensors")
    assert local_paths(header_of(path)) == []
    assert str(tmp_path) not in json.dumps(header_of(path)) and str(folder) not in json.dumps(header_of(path))
    leaky = patch.with_info(base_model=str(folder.resolve()), config={"images": "/home/me/pictures"})
    leaky_path = leaky.save(tmp_path / "leaky.safetensors")
    code, _, err = run(capsys, "push", str(leaky_path), "acme/leaky")
    assert code == 2 and "names local paths" in err and "--force" in err and "acme/leaky" not in hub.repos
    code, _, err = run(capsys, "push", str(leaky_path), "acme/leaky", "--force")
    assert code == 0 and "acme/leaky" in hub.repos


def test_a_hub_snapshot_is_named_by_its_id_and_commit(pipeline_dirs, tmp_path):
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--acme--tiny-sd" / "snapshots" / commit
    shutil.copytree(pipeline_dirs["sd1"], snapshot)
    info = load_base(str(snapshot)).describe()
    assert (info.model, info.revision) == ("acme/tiny-sd", commit)


# ------------------------------------------------------------------------------------------ defaults
def test_fmnpatch_base_trains_elon_musk_on_the_real_bench(pipeline_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FMNPATCH_BASE", raising=False)
    code, out, err = run(capsys, "train", "Elon Musk", "--steps", "1")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "FMNPATCH_BASE" in err and "--base" in err and list(tmp_path.iterdir()) == []  # nothing written
    # a tiny SD-1.5-architecture pipeline whose tokenizer also has the real bench's punctuation and digits
    folder = build_sd("sd1", tmp_path / "tiny-sd15", extra_symbols=string.punctuation + string.digits)
    monkeypatch.setenv("FMNPATCH_BASE", str(folder))
    code, out, err = run(capsys, "train", "Elon Musk", "--steps", "1", "--batch-size", "2")
    assert code == 0, err[-800:]
    patch = Patch.load(out.strip())
    assert patch.info.config["bench"] == "real" and patch.concept_names == ["Elon Musk"]
    assert patch.info.base_model == "sd1" and patch.info.architecture == "stable-diffusion-v1"
    code, out, _ = run(capsys, "train", "--help")
    assert "FMNPATCH_BASE" in out


def test_toy_concepts_need_no_base(monkeypatch):
    from fmn_patch.errors import FmnPatchError
    from fmn_patch.methods.request import configured_base

    assert configured_base(None, ["circle", "bob=robert"]) == "toy"
    assert configured_base("./sd15", ["Elon Musk"]) == "./sd15"
    with pytest.raises(FmnPatchError, match="no base model for 'Elon Musk'"):
        configured_base(None, ["Elon Musk"])


# ------------------------------------------------------------------------------------------ packaging
def _third_party_imports(folder: str) -> set[str]:
    """Top-level modules a folder imports (anywhere in a file, lazy imports too), standard library and its own aside."""
    import ast
    import sys

    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    own = {path.stem for path in (ROOT / folder).glob("*.py")}
    own |= {path.parent.name for path in (ROOT / folder).glob("*/__init__.py")}  # sub-packages: bench/peers
    # bench scripts, imported from bench/ on the path
    own |= {path.stem for path in (ROOT / "bench").glob("*.py")}
    # the repository's own: the package, and bench/ (tests import bench.peers from the repository root)
    return found - set(sys.stdlib_module_names) - {"fmn_patch", "bench"} - own


def _declared() -> tuple[dict[str, Requirement], dict[str, Requirement]]:
    """pyproject.toml's requirements by canonical name: the package's own, and every extra's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {canonical(Requirement(r).name): Requirement(r) for r in project["dependencies"]}
    extras = {
        canonical(Requirement(r).name): Requirement(r)
        for extra in project["optional-dependencies"].values()
        for r in extra
    }
    return core, extras


def test_every_declared_range_holds_its_locked_version_and_claims_no_older_minor():
    core, extras = _declared()
    lock = locked()
    for name, requirement in {**extras, **core}.items():
        assert name in lock, f"{name} is declared but not in requirements.lock: run make lock"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            name,
            lock[name],
            str(requirement),
        )
    for name, requirement in core.items():
        low = min(Version(s.version) for s in requirement.specifier if s.operator == ">=")
        pinned = Version(lock[name])
        # a user's lower bound is the minor release the suite runs with: nothing older is claimed
        assert (low.major, low.minor) == (pinned.major, pinned.minor), (name, str(low), str(pinned))


@pytest.mark.parametrize("folder", ["fmn_patch", "tests", "bench", "examples", "patches"])
def test_every_imported_module_is_provided_by_a_declared_locked_dependency(folder):
    from importlib.metadata import packages_distributions

    core, extras = _declared()
    lock = locked()
    providers = packages_distributions()
    for module in sorted(_third_party_imports(folder)):
        names = {canonical(d) for d in providers.get(module, [module])}
        # the package may import an extra's module too, behind its own install hint (nudenet, accelerate)
        assert names & (set(core) | set(extras)), f"{folder} imports {module} but no dependency provides it"
        assert names & set(lock), (
            f"{folder} imports {module}, provided by {sorted(names)}, which is not locked"
        )


@pytest.mark.skipif(bool(os.environ.get("FMNPATCH_UNLOCKED")), reason="make test-latest runs beyond the lock")
def test_the_environment_is_exactly_the_lock():
    changed = differences(locked(), installed())
    assert not changed, (
        f"{len(changed)} packages differ from requirements.lock ({'; '.join(changed[:3])}): run make install, "
        "or set FMNPATCH_UNLOCKED=1 to test another set on purpose"
    )


def test_the_lock_reads_as_exact_pins_only(tmp_path):
    lock = locked()
    assert lock["torch"].endswith("+cpu") and len(lock) > len(_declared()[0])
    bad = tmp_path / "requirements.lock"
    bad.write_text("numpy==2.4.6\n    # via torch\ntransformers>=5\n")
    with pytest.raises(ValueError, match=r"requirements.lock:3: 'transformers>=5' is not an exact"):
        locked(bad)
