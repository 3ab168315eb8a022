"""Patches on the Hub, errors that name the fix: a repo, file or revision not found, a private repo, no login or
a refused token, an invalid patch, offline and not cached, an unreachable Hub.

No network: the real huggingface_hub client talks to the in-process endpoint of test_hub's ``hub`` fixture.
"""

from __future__ import annotations

import httpx2
import pytest
from hub_endpoint import install
from test_hub import hub, offline, patch_file  # noqa: F401  (the in-process Hub, offline, a patch to push)

from fmn_patch.cli.options import load_patches
from fmn_patch.errors import PatchFileError
from fmn_patch.hub import (
    FileNotInRepoError,
    HubError,
    NotLoggedInError,
    OfflineError,
    RepoNotFoundError,
    pull,
    push,
    resolve,
)
from fmn_patch.hub.card import WEIGHT_NAME
from fmn_patch.hub.catalog import search


# ------------------------------------------------------------------------------------------------- errors
def test_repo_not_found_names_search_and_login(hub):
    with pytest.raises(
        RepoNotFoundError, match=r"hf://acme/nope: no such repo.*fmnpatch search.*hf auth login"
    ):
        pull("acme/nope")


def test_private_repo_without_login_reads_as_not_found(hub, patch_file, monkeypatch):
    push(patch_file, "acme/secret", private=True)
    assert pull("acme/secret").patch is not None
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(RepoNotFoundError, match=r"private and you are not logged in.*HF_TOKEN"):
        pull("acme/secret", force_download=True)


def test_file_not_in_repo_lists_what_is_there(hub, patch_file):
    push(patch_file, "acme/forget-bob")
    with pytest.raises(
        FileNotInRepoError,
        match=rf"has no file 'other.safetensors' \(it has pytorch_lora_weights.kohya.safetensors, {WEIGHT_NAME}\)",
    ):
        pull("hf://acme/forget-bob/other.safetensors")


def test_unknown_revision(hub, patch_file):
    push(patch_file, "acme/forget-bob")
    with pytest.raises(HubError, match=r"no such revision.*branch, tag or commit"):
        pull("hf://acme/forget-bob@nope")


def test_push_without_login_says_how_to_log_in(hub, patch_file, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(NotLoggedInError, match=r"needs a Hugging Face login: .*hf auth login.*HF_TOKEN"):
        push(patch_file, "acme/forget-bob")
    assert hub.log == [] and hub.repos == {}


def test_push_with_a_refused_token(hub, patch_file, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_revoked")
    with pytest.raises(NotLoggedInError, match=r"refused the token.*\(401\).*hf auth login"):
        push(patch_file, "acme/forget-bob")


def test_push_refuses_an_invalid_patch_before_any_request(hub, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04 not a patch")
    with pytest.raises(PatchFileError, match="pickled"):
        push(bad, "acme/forget-bob")
    assert hub.log == []


def test_offline_and_not_cached(hub, offline, patch_file):
    with pytest.raises(
        OfflineError, match=r"not in the local Hugging Face cache and HF_HUB_OFFLINE is set.*pull"
    ):
        pull("acme/forget-bob")
    with pytest.raises(OfflineError, match="not in the local"):
        load_patches(["hf://acme/forget-bob"])
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE"):
        push(patch_file, "acme/forget-bob")
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE"):
        search()


def test_unreachable_hub(hub, patch_file):
    push(patch_file, "acme/forget-bob")
    cached = pull("acme/forget-bob").path

    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    install(refuse)  # type: ignore[arg-type]
    assert resolve("hf://acme/forget-bob") == cached  # cached: used as is, no waiting

    def proxy(request: httpx2.Request) -> httpx2.Response:
        # huggingface_hub retries a refused connection for ~23 s before giving up; a refusing proxy it does not
        raise httpx2.ProxyError("proxy refused the connection", request=request)

    install(proxy)  # type: ignore[arg-type]
    with pytest.raises(
        HubError, match=r"cannot reach the Hub \(https://huggingface.co\) for hf://acme/other"
    ):
        resolve("hf://acme/other")
    with pytest.raises(HubError, match="cannot reach the Hub"):
        search()
