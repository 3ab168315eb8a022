"""The reference patches in patches/ (``make patches``): each loads, names what its file says, carries the results
it was measured with, and applies to the bundled toy model through stock diffusers."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmn_patch.families.base import load_base
from fmn_patch.format import Patch

PATCHES = Path(__file__).resolve().parents[1] / "patches"
NAMES = {
    "toy-forget-circle": ["circle"],
    "toy-forget-bob": ["bob"],
    "toy-forget-striped": ["striped"],
    "toy-forget-five": ["circle", "square", "bob", "striped", "star"],
}


@pytest.fixture(scope="module")
def toy_pipe():
    return load_base("toy").pipe


@pytest.mark.parametrize("name", sorted(NAMES))
def test_a_reference_patch_loads_with_its_card_grid_and_results(name, toy_pipe):
    path = PATCHES / f"{name}.safetensors"
    patch = Patch.load(path, require_hash=True)
    assert patch.concept_names == NAMES[name]
    results = patch.info.results
    assert results["bench"] == "toy" and set(results["acc_erased"]) == set(NAMES[name])
    # the bars of the slow quality tests: one concept <= 5% left, several in one patch <= 10% each
    bar = 0.05 if len(NAMES[name]) == 1 else 0.10
    assert all(acc <= bar for acc in results["acc_erased"].values()) and results["acc_kept"] >= 0.95
    card = (PATCHES / f"README-{name}.md").read_text()
    assert f"`{name}.safetensors`" in card and (PATCHES / f"{name}.png").stat().st_size > 0
    toy_pipe.load_lora_weights(str(path), adapter_name="ref")  # stock diffusers reads it as it is
    try:
        assert "ref" in toy_pipe.get_list_adapters()["unet"]
    finally:
        toy_pipe.delete_adapters("ref")
