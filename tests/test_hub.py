"""Patches on the Hub: push with a card, search, pull, Hub references and offline pulls.

No network: the real huggingface_hub client talks to an in-process Hub-compatible endpoint (``hub_endpoint``),
and offline pulls read a cache laid out by hand as huggingface_hub lays it out.

Verification (what a pull refuses) is in test_hub_verification, errors that name the fix in test_hub_errors;
both use this module's fixtures.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from conftest import random_patch, render
from hub_endpoint import FakeHub, Repo, install, uninstall
from huggingface_hub import ModelCard, constants
from PIL import Image

from fmn_patch.cli.options import load_patches
from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import apply_patches, remove_patches
from fmn_patch.format import Patch, PatchConcept
from fmn_patch.hub import (
    GRID_NAME,
    FileNotInRepoError,
    HubError,
    HubRef,
    is_hub_ref,
    pull,
    push,
)
from fmn_patch.hub.card import WEIGHT_NAME
from fmn_patch.hub.catalog import search
from fmn_patch.hub.refs import DeprecatedReferenceWarning

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
        ("hf://acme/celebs@3f2a9c/bob.safetensors", HubRef("acme/celebs", "bob.safetensors", "3f2a9c")),
        ("hf://acme/celebs/sub/bob.safetensors", HubRef("acme/celebs", "sub/bob.safetensors")),
        ("hf://acme/x@refs/pr/1", HubRef("acme/x", None, "refs/pr/1")),
        ("hf://acme/x@refs/pr/1/f.safetensors", HubRef("acme/x", "f.safetensors", "refs/pr/1")),
        ("hf://models/acme/x@v2", HubRef("acme/x", None, "v2")),  # huggingface_hub's explicit type prefix
        (Path("hf://acme/forget-bob@v1"), HubRef("acme/forget-bob", None, "v1")),  # pathlib collapses "//"
        ("acme/forget-bob@main", HubRef("acme/forget-bob", None, "main")),  # bare form (pull)
    ],
)
def test_reference_forms(text, expected):
    ref = HubRef.parse(text)
    assert ref == expected
    assert HubRef.parse(str(ref)) == ref
    assert str(ref).startswith("hf://")


@pytest.mark.parametrize(
    "text", ["hf://acme", "hf://acme/x/readme.md", "hf://acme/x@", "hf://a b/c", "hf://datasets/acme/x"]
)
def test_bad_reference_names_the_form(text):
    with pytest.raises(HubError, match=r"hf://ORG/NAME\[@REVISION\]\[/FILE.safetensors\]"):
        HubRef.parse(text)


def test_the_old_reference_form_is_read_with_a_deprecation_message():
    with pytest.warns(DeprecatedReferenceWarning, match=r"write hf://acme/celebs@v1/bob.safetensors"):
        ref = HubRef.parse("hf://acme/celebs/bob.safetensors@v1")
    assert ref == HubRef("acme/celebs", "bob.safetensors", "v1")
    with pytest.warns(DeprecatedReferenceWarning):
        assert HubRef.parse("hf://acme/x/sub/b.safetensors@refs/pr/2") == HubRef(
            "acme/x", "sub/b.safetensors", "refs/pr/2"
        )


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
    assert set(files) == {WEIGHT_NAME, "pytorch_lora_weights.kohya.safetensors", "README.md", GRID_NAME}
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
    assert str(pulled.pinned) == f"hf://acme/forget-bob@{pushed.commit}/{WEIGHT_NAME}"
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
    assert data["tags"] == [
        "lora",
        "diffusers",
        "text-to-image",
        "fmn-patch",
        "forget-object",
        "base_model:adapter:acme/tiny-sd",
    ]
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
    assert str(pushed.ref) == "hf://acme/celebs@dev/bob.safetensors"
    assert set(hub.repos["acme/celebs"].files("dev")) == {
        "bob.safetensors",
        "bob.kohya.safetensors",
        "README.md",
    }
    assert (
        pull("hf://acme/celebs@dev").filename == "bob.safetensors"
    )  # the only patch (its kohya export aside)
    assert pull(str(pushed.pinned)).patch.tensor_hash() == Patch.load(patch_file).tensor_hash()
    with pytest.raises(FileNotInRepoError, match=r"acme/celebs holds no \.safetensors patch"):
        pull("hf://acme/celebs")  # main has none

    other = random_patch(sd1, seed=5, concept="alice").save(tmp_path / "alice.safetensors")
    push(other, "acme/celebs@dev/alice.safetensors")
    with pytest.raises(
        FileNotInRepoError, match=r"alice\.kohya\.safetensors, alice\.safetensors.*hf://acme/celebs@dev/"
    ):
        pull("hf://acme/celebs@dev")  # two patches and no default: name one


def test_search_filters_by_text_base_and_category(hub, sd1, tmp_path):
    sd15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    for seed, concept in [(1, PatchConcept("Van Gogh", "style")), (2, PatchConcept("Elon Musk", "identity"))]:
        patch = random_patch(sd1, seed=seed).with_info(concepts=(concept,))
        path = patch.save(tmp_path / f"{seed}.safetensors")
        push(path, f"acme/forget-{concept.name.lower().replace(' ', '-')}", base_model=sd15)
    push(
        random_patch(sd1, seed=3).save(tmp_path / "3.safetensors"),
        "acme/forget-circle",
        base_model="acme/other",
    )
    hub.repos["acme/unrelated"] = Repo()  # an untagged repo is never listed

    assert [p.repo_id for p in search()] == [
        "acme/forget-circle",
        "acme/forget-elon-musk",
        "acme/forget-van-gogh",
    ]
    assert [p.repo_id for p in search("elon")] == ["acme/forget-elon-musk"]  # the Hub's search, on repo ids
    assert [p.repo_id for p in search(categories=["style"])] == ["acme/forget-van-gogh"]
    assert [p.repo_id for p in search(categories=["id"])] == ["acme/forget-elon-musk"]
    assert [p.repo_id for p in search(base=sd15)] == ["acme/forget-elon-musk", "acme/forget-van-gogh"]
    assert search(base="stabilityai/sdxl") == [] and len(search(limit=1)) == 1
    (found,) = search("elon", base=sd15)
    assert found.concepts == (PatchConcept("Elon Musk", "identity"),) and found.filename == WEIGHT_NAME
    # the Hub did the filtering: one list request, with the tags and the text, and one header per result
    hub.log.clear()
    search("van", base=sd15, categories=["style"])
    listing = [line for line in hub.log if line == "GET /api/models"]
    assert len(listing) == 1
    with pytest.raises(FmnPatchError, match="--base 'sd15' is not a Hub model id"):
        search(base="sd15")
    with pytest.raises(FmnPatchError, match="unknown category 'celebrity'; use one of identity"):
        search(categories=["celebrity"])


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
    assert str(pulled.pinned) == f"hf://acme/forget-bob@{commit}/{WEIGHT_NAME}"
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


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_mmdit_patch_round_trips_through_the_hub(hub, mmdit_dirs, kind, tmp_path):
    base = load_base(str(mmdit_dirs[kind]))
    path = random_patch(base, seed=2, concept="bob").save(tmp_path / "p.safetensors")
    push(path, f"acme/{kind}-forget-bob")
    card = ModelCard.load(f"acme/{kind}-forget-bob")
    assert "transformer" in card.text or "MMDiT" in card.text
    files = set(hub.repos[f"acme/{kind}-forget-bob"].files("main"))
    rows = card.text.split("## Files", 1)[1].split("##", 1)[0]
    if kind == "flux":  # the fused-qkv kohya export beside the native file, for ComfyUI
        assert files == {WEIGHT_NAME, "pytorch_lora_weights.kohya.safetensors", "README.md"}
        assert "`pytorch_lora_weights.kohya.safetensors` | ComfyUI" in rows
    else:  # SD3 has no kohya form: ComfyUI reads the native file's transformer.* keys, and the card says so
        assert files == {WEIGHT_NAME, "README.md"}
        assert (
            f"`{WEIGHT_NAME}` | diffusers (pipe.load_lora_weights), ComfyUI" in rows and "kohya" not in rows
        )
    pulled = pull(f"acme/{kind}-forget-bob", tmp_path / "pulled")
    assert pulled.path.read_bytes() == path.read_bytes()
    names = apply_patches(base, load_patches([f"hf://acme/{kind}-forget-bob"]))
    ours = render(base)
    remove_patches(base, names)
    base.pipe.load_lora_weights(
        f"acme/{kind}-forget-bob", weight_name=WEIGHT_NAME, cache_dir=str(tmp_path / "dcache")
    )
    assert torch.equal(render(base), ours)
