"""Patches on the Hub, verified: a tampered file, a patch for another base, a pickle, a tampered cache, a
malformed community header and a patch without a hash are refused or skipped, never applied.

No network: the real huggingface_hub client talks to the in-process endpoint of test_hub's ``hub`` fixture.
"""

from __future__ import annotations

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants
from test_hub import hub, patch_file  # noqa: F401  (the in-process Hub and a patch to push)

from fmn_patch.cli.options import load_patches
from fmn_patch.errors import BaseMismatchError, PatchFileError
from fmn_patch.families.stack import BaseMismatchWarning, apply_patches, remove_patches
from fmn_patch.format import Patch
from fmn_patch.hub import pull, push
from fmn_patch.hub.card import WEIGHT_NAME
from fmn_patch.hub.catalog import search


# ------------------------------------------------------------------------------------------- verification
def test_tampered_file_on_the_hub_is_refused(hub, patch_file, tmp_path):
    push(patch_file, "acme/forget-bob")
    repo = hub.repos["acme/forget-bob"]
    data = bytearray(repo.files("main")[WEIGHT_NAME])
    data[-1] ^= 0x01  # one bit of one tensor; the header (and its hash) untouched
    repo.commits[repo.branches["main"]][WEIGHT_NAME] = bytes(data)

    out = tmp_path / "out.safetensors"
    with pytest.raises(PatchFileError, match=r"hf://acme/forget-bob is refused: .*tensor hash mismatch"):
        pull("hf://acme/forget-bob", out)
    assert not out.exists()
    with pytest.raises(PatchFileError, match="tensor hash mismatch"):
        load_patches(["hf://acme/forget-bob"])


def test_a_hub_patch_for_another_base_warns_or_is_refused(hub, sd1, patch_file, tmp_path):
    other = Patch.load(patch_file).with_info(base_hash="0" * 64)  # made for another base (e.g. a fine-tune)
    push(other.save(tmp_path / "other.safetensors"), "acme/for-another-base")
    with pytest.warns(BaseMismatchWarning, match="was made for base"):
        remove_patches(sd1, apply_patches(sd1, load_patches(["hf://acme/for-another-base"])))
    with pytest.raises(BaseMismatchError, match="pass --strict to refuse"):
        apply_patches(sd1, load_patches(["hf://acme/for-another-base"]), strict=True)


def test_a_pickle_on_the_hub_is_refused_unread(hub, tmp_path):
    payload = tmp_path / "evil.safetensors"
    torch.save({"x": torch.zeros(1)}, payload)  # a zip-pickle under a .safetensors name
    huggingface_hub.HfApi().create_repo("mallory/evil")
    huggingface_hub.HfApi().upload_file(
        path_or_fileobj=payload, path_in_repo=WEIGHT_NAME, repo_id="mallory/evil"
    )
    with pytest.raises(PatchFileError, match="pickled PyTorch checkpoint, refused"):
        pull("mallory/evil")


def test_tampered_cache_is_refused_offline(hub, patch_file, monkeypatch):
    push(patch_file, "acme/forget-bob")
    cached = pull("hf://acme/forget-bob").path
    blob = cached.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.write_bytes(bytes(data))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PatchFileError, match="tensor hash mismatch"):
        pull("hf://acme/forget-bob")


# ------------------------------------------------------------------------------------- malformed and unhashed
def test_search_skips_a_malformed_community_header_with_a_warning(hub, patch_file):
    import struct

    from fmn_patch.hub.catalog import SkippedPatchWarning

    push(patch_file, "acme/good")
    push(patch_file, "mallory/bad")
    repo = hub.repos["mallory/bad"]
    data = repo.files("main")[WEIGHT_NAME]
    (n,) = struct.unpack("<Q", data[:8])
    header = b'{"__metadata__": {"fmn_patch.format_version": "1", "fmn_patch.concepts": "{\\"name\\": 1}"}}'
    header += b" " * (n - len(header))  # the same length: the rest of the file still lines up
    repo.commits[repo.branches["main"]][WEIGHT_NAME] = data[:8] + header + data[8 + n :]
    with pytest.warns(SkippedPatchWarning, match=r"skipped mallory/bad: .*concepts must be a JSON list"):
        found = search()
    assert [p.repo_id for p in found] == ["acme/good"]


def test_pull_refuses_a_patch_without_a_hash_and_says_verified_only_when_checked(hub, patch_file, tmp_path):
    import safetensors.torch

    patch = Patch.load(patch_file)
    header = patch.header()
    header.pop("modelspec.hash_sha256")
    header.pop("fmn_patch.tensor_hash")
    unhashed = tmp_path / "unhashed.safetensors"
    safetensors.torch.save_file(patch.state_dict(), str(unhashed), metadata=header)
    with pytest.raises(PatchFileError, match="carries no tensor hash"):
        push(unhashed, "acme/unhashed")  # push publishes nothing pull would refuse
    huggingface_hub.HfApi().create_repo("acme/unhashed")  # uploaded by other means
    huggingface_hub.HfApi().upload_file(
        path_or_fileobj=unhashed, path_in_repo=WEIGHT_NAME, repo_id="acme/unhashed"
    )
    with pytest.raises(PatchFileError, match="carries no tensor hash"):
        pull("acme/unhashed", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    push(patch_file, "acme/hashed")
    assert pull("acme/hashed").patch.verified
