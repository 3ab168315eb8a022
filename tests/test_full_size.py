"""Full-size architectures (random weights from the public configs): target discovery and exact removal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fmn_patch.families.unet import find_targets
from fmn_patch.format import Patch, PatchInfo

CONFIGS = Path(__file__).parent.parent / "bench" / "configs"


def _unet(name: str, device: str):
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in json.loads((CONFIGS / name).read_text()).items() if not k.startswith("_")}
    with torch.device(device):
        return UNet2DConditionModel(**config)


@pytest.mark.parametrize(
    ("name", "targets", "text_dim"),
    [("sd15.json", 32, 768), ("sd21.json", 32, 1024), ("sdxl.json", 140, 2048)],
)
def test_target_discovery_at_full_size(name, targets, text_dim):
    found = find_targets(_unet(name, "meta"))
    assert len(found) == targets
    assert {layer.in_features for layer in found.values()} == {text_dim}


@pytest.mark.slow
def test_sd15_apply_and_remove_is_exact_at_full_size(tmp_path):
    unet = _unet("sd15.json", "cpu")
    before = {k: v.weight.detach().clone() for k, v in find_targets(unet).items()}
    gen = torch.Generator().manual_seed(0)
    factors = {
        m: (
            torch.randn(4, layer.in_features, generator=gen) * 0.01,
            torch.randn(layer.out_features, 4, generator=gen) * 0.01,
        )
        for m, layer in find_targets(unet).items()
    }
    patch = Patch.load(Patch(factors, PatchInfo()).save(tmp_path / "p.safetensors"))
    unet.load_lora_adapter(patch.state_dict(), prefix="unet", adapter_name="p")
    x = torch.randn(1, 4, 64, 64, generator=gen)
    text = torch.randn(1, 77, 768, generator=gen)
    with torch.no_grad():
        patched = unet(x, 10, encoder_hidden_states=text).sample
        unet.delete_adapters("p")
        restored = unet(x, 10, encoder_hidden_states=text).sample
    after = {k: v.weight for k, v in find_targets(unet).items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.allclose(patched, restored)
