"""The patch file: round trips, the self-describing header, and one clear error per kind of bad file."""

from __future__ import annotations

import json
import pickle
import zipfile

import pytest
import safetensors
import safetensors.torch
import torch
from conftest import random_patch

from fmn_patch.errors import FmnPatchError, PatchFileError
from fmn_patch.families.base import load_base
from fmn_patch.families.unet import find_targets
from fmn_patch.format import FORMAT_VERSION, Patch, PatchConcept


def test_save_load_round_trips_tensors_and_metadata(sd1, tmp_path):
    patch = random_patch(sd1, rank=3, seed=7)
    patch.info.config["lr"] = 1e-3
    patch.info.results["acc_kept"] = 0.97
    path = patch.save(tmp_path / "p.safetensors")
    loaded = Patch.load(path)
    assert loaded.modules == patch.modules
    for m in patch.modules:
        assert torch.equal(loaded.factors[m][0], patch.factors[m][0])
        assert torch.equal(loaded.factors[m][1], patch.factors[m][1])
    assert loaded.info.concepts == patch.info.concepts
    assert loaded.info.base_hash == patch.info.base_hash == sd1.family.identity.target_hash()
    assert loaded.info.config == patch.info.config
    assert loaded.info.results == {"acc_kept": 0.97}
    assert loaded.info.date  # set on save
    assert loaded.rank == 3


def test_header_is_self_describing_and_strings_only(sd1, tmp_path):
    path = random_patch(sd1).save(tmp_path / "p.safetensors")
    with safetensors.safe_open(str(path), "pt") as f:
        header = f.metadata()
        keys = list(f.keys())
    assert all(isinstance(v, str) for v in header.values())
    for key in (
        "modelspec.sai_model_spec",
        "modelspec.architecture",
        "modelspec.implementation",
        "modelspec.title",
        "modelspec.description",
        "modelspec.date",
        "modelspec.hash_sha256",
        "modelspec.merged_from",
        "fmn_patch.format_version",
        "fmn_patch.method",
        "fmn_patch.concepts",
        "fmn_patch.base_model",
        "fmn_patch.base_revision",
        "fmn_patch.base_hash",
        "fmn_patch.rank",
        "fmn_patch.target_modules",
        "fmn_patch.config",
        "fmn_patch.parents",
        "fmn_patch.versions",
    ):
        assert key in header, key
    assert header["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert json.loads(header["fmn_patch.concepts"]) == [{"name": "circle", "category": "object"}]
    lora = json.loads(header["lora_adapter_metadata"])
    assert lora["unet.r"] == lora["unet.lora_alpha"] == 2
    assert set(lora) <= {
        f"unet.{k}"
        for k in (
            "r",
            "lora_alpha",
            "target_modules",
            "rank_pattern",
            "alpha_pattern",
            "use_dora",
            "lora_bias",
        )
    }
    assert all(k.startswith("unet.") and ".attn2.to_" in k and "lora" in k for k in keys)
    assert "torch" in json.loads(header["fmn_patch.versions"])


def test_same_inputs_same_file_tensors(sd1, tmp_path):
    a = random_patch(sd1, seed=5).save(tmp_path / "a.safetensors")
    b = random_patch(sd1, seed=5).save(tmp_path / "b.safetensors")
    ta, tb = safetensors.torch.load_file(str(a)), safetensors.torch.load_file(str(b))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert Patch.load(a).tensor_hash() == Patch.load(b).tensor_hash()


def test_target_discovery_finds_every_cross_attention_kv(pipeline_dirs):
    for kind, expected in {"sd1": 14, "sd2": 14, "sdxl": 24}.items():
        unet = load_base(str(pipeline_dirs[kind])).pipe.unet
        targets = find_targets(unet)
        n_attn2 = sum(1 for name, _ in unet.named_modules() if name.endswith("attn2"))
        assert len(targets) == 2 * n_attn2 == expected, kind
        assert all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in targets)
        assert not any("attn1" in n for n in targets)


def test_from_deltas_is_exact_at_full_rank():
    torch.manual_seed(0)
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    delta = torch.randn(8, 3) @ torch.randn(3, 6)  # true rank 3
    patch, residuals = Patch.from_deltas({module: delta}, rank=3)
    torch.testing.assert_close(patch.delta(module), delta, rtol=0, atol=1e-5)
    assert residuals[module] < 1e-6
    low, residuals = Patch.from_deltas({module: delta}, rank=1)
    assert low.rank == 1 and 0 < residuals[module] < 1
    padded, _ = Patch.from_deltas({module: delta}, rank=5)  # more than the 3 singular values: zero-padded
    assert padded.rank == 5


# ------------------------------------------------------------------------------------------ bad files
def _assert_refused(path, match):
    with pytest.raises(PatchFileError, match=match):
        Patch.load(path)


def test_not_a_safetensors_file(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_text("hello, I am a text file that is long enough")
    _assert_refused(p, "not a safetensors file")
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")
    _assert_refused(tmp_path / "tiny.safetensors", "too short")
    _assert_refused(tmp_path / "missing.safetensors", "no such file")


def test_pickled_checkpoints_are_refused_without_unpickling(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append(a))
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    _assert_refused(raw, "pickled")
    zipped = tmp_path / "model.bin"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    _assert_refused(zipped, "pickled")
    assert calls == []


def test_truncated_file(sd1, tmp_path):
    path = random_patch(sd1).save(tmp_path / "p.safetensors")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-100])
    _assert_refused(cut, "truncated")
    head_cut = tmp_path / "head.safetensors"
    head_cut.write_bytes(data[:50])
    _assert_refused(head_cut, "truncated")


def test_corrupted_tensor_bytes_fail_the_hash(sd1, tmp_path):
    path = random_patch(sd1).save(tmp_path / "p.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    _assert_refused(path, "hash mismatch")


def _write(path, tensors, header):
    safetensors.torch.save_file(tensors, str(path), metadata=header)
    return path


def test_foreign_keys_are_refused(tmp_path):
    header = {"fmn_patch.format_version": "1"}
    p = _write(
        tmp_path / "a.safetensors",
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_A.weight": torch.zeros(
                2, 4
            ),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_B.weight": torch.zeros(
                4, 2
            ),
        },
        header,
    )
    _assert_refused(p, "not a LoRA factor of a text-side key/value projection")
    stem = "lora_unet_down_blocks_0_attn2_to_k"  # no attentions_J_transformer_blocks_T: no UNet module
    p = _write(
        tmp_path / "b.safetensors",
        {f"{stem}.lora_down.weight": torch.zeros(2, 4), f"{stem}.lora_up.weight": torch.zeros(4, 2)},
        header,
    )
    _assert_refused(p, "a kohya LoRA whose keys .* are not all cross-attention key/value projections")
    p = _write(tmp_path / "c.safetensors", {f"{stem}.lora_down.weight": torch.zeros(2, 4)}, header)
    _assert_refused(p, f"{stem} has no lora_down or lora_up weight; the file is incomplete")


def test_inconsistent_shapes_are_refused(tmp_path):
    m = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    p = _write(
        tmp_path / "a.safetensors",
        {f"{m}.lora_A.weight": torch.zeros(2, 4), f"{m}.lora_B.weight": torch.zeros(4, 3)},
        {"fmn_patch.format_version": "1"},
    )
    _assert_refused(p, "inconsistent shapes")
    p = _write(
        tmp_path / "b.safetensors",
        {f"{m}.lora_A.weight": torch.zeros(2, 4)},
        {"fmn_patch.format_version": "1"},
    )
    _assert_refused(p, "no lora_B")


def test_unknown_format_version_and_foreign_lora(sd1, tmp_path):
    tensors = random_patch(sd1).state_dict()
    p = _write(tmp_path / "v9.safetensors", tensors, {"fmn_patch.format_version": str(FORMAT_VERSION + 8)})
    _assert_refused(p, f"format version '{FORMAT_VERSION + 8}' is unknown")
    p = _write(tmp_path / "plain.safetensors", tensors, {"format": "pt"})
    _assert_refused(p, "not an fmn-patch file")


def test_save_is_atomic_and_never_overwrites(sd1, tmp_path, monkeypatch):
    patch = random_patch(sd1)
    path = patch.save(tmp_path / "p.safetensors")
    before = path.read_bytes()
    with pytest.raises(FmnPatchError, match="overwrite"):
        random_patch(sd1, seed=9).save(path)
    assert path.read_bytes() == before

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        patch.save(tmp_path / "q.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"], "no partial file may remain"
    with pytest.raises(FmnPatchError, match=r"\.safetensors"):
        patch.save(tmp_path / "p.bin")


def test_patch_info_validates_concepts():
    with pytest.raises(FmnPatchError, match="unknown category 'colour'"):
        PatchConcept("red", "colour")  # type: ignore[arg-type]
    with pytest.raises(FmnPatchError, match="empty"):
        PatchConcept("  ")
