"""Patches on the Hub: push with a card, search, pull, Hub references, verification, and errors that name the fix.

No network: the real huggingface_hub client talks to an in-process Hub-compatible endpoint (``hub_endpoint``),
and offline pulls read a cache laid out by hand as huggingface_hub lays it out.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
import torch
from conftest import random_patch, render
from hub_endpoint import FakeHub, Repo, install, uninstall
from huggingface_hub import ModelCard, constants
from PIL import Image

from fmn_patch.cli.options import load_patches
from fmn_patch.errors import BaseMismatchError, FmnPatchError, PatchFileError
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import BaseMismatchWarning, apply_patches, remove_patches
from fmn_patch.format import Patch, PatchConcept
from fmn_patch.hub import (
    GRID_NAME,
    FileNotInRepoError,
    HubError,
    HubRef,
    NotLoggedInError,
    OfflineError,
    RepoNotFoundError,
    is_hub_ref,
    pull,
    push,
    resolve,
)
from fmn_patch.hub.card import WEIGHT_NAME
from fmn_patch.hub.catalog import search

TOKEN = "hf_test_write"
RESULTS = {
    "bench": "toy",
    "concepts": {"bob": {"category": "object", "m_score": 0.91, "acc": 0.05}},
    "acc_kept": 0.88,
}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The fake Hub installed as the client's endpoint, a logged-in user, an empty cache, online."""
    fake = FakeHub(tokens={TOKEN})
    install(fake)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield fake
    uninstall()


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 as huggingface_hub reads it (once, at import, into ``constants``)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def patch_file(sd1, tmp_path) -> Path:
    patch = random_patch(sd1, seed=3, concept="bob")
    patch = patch.with_info(results=RESULTS, license="mit")
    return patch.save(tmp_path / "forget-bob.safetensors")


# --------------------------------------------------------------------------------------------- references
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://acme/forget-bob", HubRef("acme/forget-bob")),
        ("hf://acme/forget-bob@v1", HubRef("acme/forget-bob", None, "v1")),
        ("hf://acme/celebs/bob.safetensors@3f2a9c", HubRef("acme/celebs", "bob.safetensors", "3f2a9c")),
        ("hf://acme/celebs/sub/bob.safetensors", HubRef("acme/celebs", "sub/bob.safetensors")),
        ("hf://acme/x@refs/pr/1", HubRef("acme/x", None, "refs/pr/1")),
        (Path("hf://acme/forget-bob@v1"), HubRef("acme/forget-bob", None, "v1")),  # pathlib collapses "//"
        ("acme/forget-bob@main", HubRef("acme/forget-bob", None, "main")),  # bare form (pull)
    ],
)
def test_reference_forms(text, expected):
    ref = HubRef.parse(text)
    assert ref == expected
    assert HubRef.parse(str(ref)) == ref
    assert str(ref).startswith("hf://")


@pytest.mark.parametrize("text", ["hf://acme", "hf://acme/x/readme.md", "hf://acme/x@", "hf://a b/c"])
def test_bad_reference_names_the_form(text):
    with pytest.raises(HubError, match=r"hf://ORG/NAME"):
        HubRef.parse(text)


def test_only_hf_scheme_is_a_hub_ref(tmp_path):
    assert is_hub_ref("hf://acme/x") and is_hub_ref(Path("hf://acme/x"))
    assert not is_hub_ref("acme/x.safetensors") and not is_hub_ref(tmp_path / "p.safetensors")


# --------------------------------------------------------------------------------------------- round trip
def test_push_search_pull_apply_round_trip(hub, pipeline_dirs, patch_file, tmp_path):
    grid = tmp_path / "preview.png"
    Image.new("RGB", (8, 4), "white").save(grid)

    pushed = push(patch_file, "acme/forget-bob", grid=grid, base_model="acme/tiny-sd")
    assert str(pushed.ref) == "hf://acme/forget-bob" and len(pushed.commit) == 40
    files = hub.repos["acme/forget-bob"].files("main")
    assert set(files) == {WEIGHT_NAME, "README.md", GRID_NAME}
    assert files[WEIGHT_NAME] == patch_file.read_bytes()

    # search reads headers remotely with byte ranges: the file itself is never fetched whole
    hub.log.clear()
    (found,) = search("bob")
    assert found.repo_id == "acme/forget-bob" and found.from_header
    assert found.concepts == (PatchConcept("bob", "object"),) and found.categories == ("object",)
    assert found.base_model == "acme/tiny-sd" and found.method == "manual" and found.rank == 2
    reads = [line for line in hub.log if "/resolve/" in line]
    assert reads and all("[bytes=" in line for line in reads)

    pulled = pull(str(found.ref), tmp_path / "pulled")
    assert pulled.commit == pushed.commit and pulled.pinned == HubRef(
        "acme/forget-bob", WEIGHT_NAME, pushed.commit
    )
    assert (
        pulled.path == tmp_path / "pulled" / WEIGHT_NAME
        and pulled.path.read_bytes() == patch_file.read_bytes()
    )

    pipe = load_base(str(pipeline_dirs["sd1"]))
    base = render(pipe)
    names = apply_patches(pipe, [Patch.load(patch_file)])
    local = render(pipe)
    remove_patches(pipe, names)  # restores the base bit for bit (test_apply)
    names = apply_patches(
        pipe, load_patches(["hf://acme/forget-bob"])
    )  # what every command does with a reference
    assert not torch.allclose(local, base, atol=1e-3)
    torch.testing.assert_close(render(pipe), local, rtol=0, atol=0)
    remove_patches(pipe, names)

    # the card's stock-diffusers snippet, run as written: load_lora_weights(repo_id, weight_name=...)
    pipe.pipe.load_lora_weights(
        "acme/forget-bob", weight_name=WEIGHT_NAME, cache_dir=str(tmp_path / "dcache")
    )
    torch.testing.assert_close(render(pipe), local, rtol=0, atol=1e-6)


def test_card_follows_the_diffusers_lora_convention(hub, patch_file, tmp_path):
    grid = tmp_path / "preview.png"
    Image.new("RGB", (8, 4), "white").save(grid)
    push(patch_file, "acme/forget-bob", grid=grid, base_model="acme/tiny-sd")
    card = ModelCard(hub.repos["acme/forget-bob"].files("main")["README.md"].decode())
    data = card.data.to_dict()
    assert data["base_model"] == "acme/tiny-sd" and data["library_name"] == "diffusers"
    assert data["license"] == "mit" and data["pipeline_tag"] == "text-to-image"
    assert data["tags"] == ["lora", "diffusers", "text-to-image", "fmn-patch", "forget-object"]
    text = card.text
    patch = Patch.load(patch_file)
    for needle in [
        "| bob | object |",
        "method: `manual`",
        f"rank: 2 on 14 modules ({patch.num_parameters():,} parameters",
        f"{patch_file.stat().st_size / 1024:.1f} KiB",
        'pipe = AutoPipelineForText2Image.from_pretrained("acme/tiny-sd")',
        f'pipe.load_lora_weights("acme/forget-bob", weight_name="{WEIGHT_NAME}")',
        "fmnpatch apply acme/tiny-sd hf://acme/forget-bob --prompt 'a photo of bob'",
        "## Results (ConceptBench / M-Score)",
        "| concept | m\\_score | acc |",
        "| bob | 0.91 | 0.05 |",
        "made for: `acme/tiny-sd` \\[stable-diffusion-v1\\]",
        "fmnpatch pull acme/forget-bob -o forget-bob.safetensors",
        "| acc\\_kept | 0.88 |",
        f"![before / after]({GRID_NAME})",
        patch.tensor_hash(),
    ]:
        assert needle in text, needle


def test_card_leaves_out_a_local_base_and_missing_parts(hub, sd1, tmp_path):
    path = random_patch(sd1, seed=1, concept="circle").save(tmp_path / "p.safetensors")  # base: a tmp folder
    push(path, "acme/forget-circle")
    card = ModelCard(hub.repos["acme/forget-circle"].files("main")["README.md"].decode())
    data = card.data.to_dict()
    assert "base_model" not in data and data["license"] == "other"
    assert "Results" not in card.text and "Before / after" not in card.text
    assert 'from_pretrained("BASE_MODEL_ID")' in card.text


def test_branch_named_file_and_pinned_commit(hub, sd1, patch_file, tmp_path):
    pushed = push(patch_file, "acme/celebs/bob.safetensors", revision="dev")
    assert str(pushed.ref) == "hf://acme/celebs/bob.safetensors@dev"
    assert WEIGHT_NAME not in hub.repos["acme/celebs"].files("dev")
    assert pull("hf://acme/celebs@dev").filename == "bob.safetensors"  # the repo's only patch
    assert pull(str(pushed.pinned)).patch.tensor_hash() == Patch.load(patch_file).tensor_hash()
    with pytest.raises(FileNotInRepoError, match=r"acme/celebs holds no \.safetensors patch"):
        pull("hf://acme/celebs")  # main has none

    other = random_patch(sd1, seed=5, concept="alice").save(tmp_path / "alice.safetensors")
    push(other, "acme/celebs/alice.safetensors", revision="dev")
    with pytest.raises(
        FileNotInRepoError, match=r"alice\.safetensors, bob\.safetensors.*hf://acme/celebs/alice"
    ):
        pull("hf://acme/celebs@dev")  # two patches and no default: name one


def test_search_filters_by_text_base_and_category(hub, sd1, tmp_path):
    for seed, concept in [(1, PatchConcept("Van Gogh", "style")), (2, PatchConcept("Elon Musk", "identity"))]:
        patch = random_patch(sd1, seed=seed).with_info(concepts=(concept,))
        path = patch.save(tmp_path / f"{seed}.safetensors")
        push(path, f"acme/forget-{seed}", base_model="stable-diffusion-v1-5/stable-diffusion-v1-5")
    hub.repos["acme/unrelated"] = Repo()  # an untagged repo is never listed

    assert [p.repo_id for p in search()] == ["acme/forget-1", "acme/forget-2"]
    assert [p.repo_id for p in search("elon")] == ["acme/forget-2"]  # matched on a concept name
    assert [p.repo_id for p in search(categories=["style"])] == ["acme/forget-1"]
    assert [p.repo_id for p in search(categories=["id"])] == ["acme/forget-2"]
    assert len(search(base="stable-diffusion-v1-5")) == 2 and search(base="sdxl") == []
    assert len(search(limit=1)) == 1
    with pytest.raises(FmnPatchError, match="unknown category 'celebrity'; use one of identity"):
        search(categories=["celebrity"])


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


# ------------------------------------------------------------------------------------------------ offline
def _populate_cache(cache: Path, repo_id: str, files: dict[str, bytes], ref: str = "main") -> str:
    """The cache layout huggingface_hub writes: blobs by hash, snapshots/<commit>/<file> links, refs/<ref>."""
    commit = hashlib.sha1(repr(sorted(files)).encode()).hexdigest()
    root = cache / f"models--{repo_id.replace('/', '--')}"
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return commit


def test_offline_pull_from_a_prepopulated_cache(hub, offline, patch_file, tmp_path):
    commit = _populate_cache(
        Path(constants.HF_HUB_CACHE), "acme/forget-bob", {WEIGHT_NAME: patch_file.read_bytes()}
    )
    pulled = pull("acme/forget-bob", tmp_path / "copy.safetensors")
    assert pulled.commit == commit and pulled.path.read_bytes() == patch_file.read_bytes()
    assert str(pulled.pinned) == f"hf://acme/forget-bob/{WEIGHT_NAME}@{commit}"
    assert pull(f"hf://acme/forget-bob@{commit}").commit == commit  # a pinned commit resolves offline too
    (patch,) = load_patches(["hf://acme/forget-bob"])
    assert patch.tensor_hash() == Patch.load(patch_file).tensor_hash()
    assert hub.log == []  # not one request reached the endpoint


def test_pull_online_then_offline_uses_the_cache(hub, patch_file, monkeypatch):
    push(patch_file, "acme/forget-bob")
    first = pull("acme/forget-bob")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.log.clear()
    assert pull("acme/forget-bob").path == first.path and hub.log == []


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
        FileNotInRepoError, match=rf"has no file 'other.safetensors' \(it has {WEIGHT_NAME}\)"
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


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_mmdit_patch_round_trips_through_the_hub(hub, mmdit_dirs, kind, tmp_path):
    base = load_base(str(mmdit_dirs[kind]))
    path = random_patch(base, seed=2, concept="bob").save(tmp_path / "p.safetensors")
    push(path, f"acme/{kind}-forget-bob")
    card = ModelCard.load(f"acme/{kind}-forget-bob")
    assert "transformer" in card.text or "MMDiT" in card.text
    pulled = pull(f"acme/{kind}-forget-bob", tmp_path / "pulled")
    assert pulled.path.read_bytes() == path.read_bytes()
    names = apply_patches(base, load_patches([f"hf://acme/{kind}-forget-bob"]))
    ours = render(base)
    remove_patches(base, names)
    base.pipe.load_lora_weights(
        f"acme/{kind}-forget-bob", weight_name=WEIGHT_NAME, cache_dir=str(tmp_path / "dcache")
    )
    assert torch.equal(render(base), ours)
