"""Training on the MMDiT families (tiny SD3.5-like and Flux-like pipelines): determinism, what trains which
projection, the per-block preservation inputs, and the CLI from a folder whose family is read from its contents."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import render

from fmn_patch.families.base import load_base
from fmn_patch.families.stack import apply_patches
from fmn_patch.methods.dataset import preserve_states
from fmn_patch.methods.lora import lora_adapter
from fmn_patch.methods.losses import resteer_loss
from fmn_patch.methods.resteer import TrainConfig, train_patch

FAST = dict(steps=4, images_per_prompt=1, image_steps=2, batch_size=2)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path_factory.getbasetemp() / "refcache"))


def test_train_is_deterministic_and_leaves_the_base_untouched(mkind, mmdit_dirs):
    folder = str(mmdit_dirs[mkind])
    base = load_base(folder)
    before = render(base)
    a = train_patch(base, ["Elon Musk"], TrainConfig(**FAST), progress=False)
    assert torch.equal(render(base), before)
    assert not (getattr(base.pipe.transformer, "peft_config", None) or {})
    b = train_patch(load_base(folder), ["Elon Musk"], TrainConfig(**FAST), progress=False)
    assert a.tensor_hash() == b.tensor_hash()
    assert a.component == "transformer" and set(a.modules) == set(base.family.adapters.targets())
    assert a.info.architecture == base.architecture and a.info.config["anchors"] == {"Elon Musk": "a person"}
    assert set(a.info.extra["loss_terms"]) == {"resteer", "denoise", "preserve"}
    assert (
        a.info.config["init"] == "auto" and a.info.extra["start"] == "zero"
    )  # no closed-form edit to start from
    apply_patches(base, [a])
    assert not torch.equal(
        render(base, "a photo of Elon Musk"), render(load_base(folder), "a photo of Elon Musk")
    )


def test_resteering_reads_keys_and_the_last_values_get_no_resteer_gradient(mkind, mmdit_dirs):
    """Re-steering reads attention maps (Q and K). An earlier block's text values still reach later maps through
    the text stream; the last joint block's text values reach only image outputs: no re-steering gradient."""
    base = load_base(str(mmdit_dirs[mkind]))
    family = base.family
    cond = family.text.encode(["a photo of Elon Musk"])
    mask = torch.zeros(1, family.text.max_length)
    mask[0, list(family.text.place("a photo of Elon Musk", "Elon Musk").positions())] = 1.0
    x = torch.randn(1, *family.images.latent_shape(), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with lora_adapter(base, 2, seed=0) as session:
        for m in session.modules.values():  # non-zero B so that every factor has a gradient path
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.1)
        maps: list[torch.Tensor] = []
        with family.noise.capture_attention(lambda _n, p: maps.append(p)):
            family.noise.denoise(family.noise.add_noise(x, torch.randn_like(x), t), t, cond)
        resteer_loss(maps, mask).backward()
        grads = {
            n: sum(float(p.grad.abs().sum()) for k, p in m.named_parameters() if p.grad is not None)
            for n, m in session.modules.items()
        }
    blocks = sorted({n.rsplit(".", 1)[0] for n in grads}, key=lambda b: int(b.split(".")[1]))
    assert grads[f"{blocks[-1]}.add_v_proj"] == 0.0
    assert all(grads[f"{b}.add_k_proj"] > 0 for b in blocks)
    assert grads["transformer_blocks.0.attn.add_v_proj"] > 0  # through the text stream into later blocks


def test_preservation_reads_each_blocks_own_inputs(mkind, mmdit_dirs):
    base = load_base(str(mmdit_dirs[mkind]))
    inputs = preserve_states(
        base, ["a photo of a cat", ""], torch.randn(2, *base.family.images.latent_shape())
    )
    assert isinstance(inputs, dict) and set(inputs) == set(base.family.adapters.targets())
    first, second = (
        inputs["transformer_blocks.0.attn.add_k_proj"],
        inputs["transformer_blocks.1.attn.add_k_proj"],
    )
    assert first.shape == second.shape and not torch.allclose(first, second)


def test_resteering_lowers_the_attention_mass(mmdit_dirs):
    base = load_base(str(mmdit_dirs["sd3"]))
    config = TrainConfig(**{**FAST, "steps": 25, "denoise_weight": 0.0, "preserve_weight": 0.0, "lr": 1e-2})
    curve = train_patch(base, ["Elon Musk"], config, progress=False).info.extra["loss_curve"]
    assert sum(curve[-5:]) / 5 < 0.7 * sum(curve[:5]) / 5


def test_cli_train_then_apply_on_a_folder(capsys, mkind, mmdit_dirs, tmp_path):
    from test_cli import run

    folder = str(mmdit_dirs[mkind])
    patch = tmp_path / "forget.safetensors"
    args = ["train", "Elon Musk", "--base", folder, "--bench", "real", "--steps", "2", "--batch-size", "2"]
    code, stdout, err = run(capsys, *args, "-o", str(patch), "--json")
    assert code == 0, err
    assert json.loads(stdout)["output"] == str(patch) and patch.exists()
    out = tmp_path / "patched"
    code, stdout, err = run(capsys, "apply", folder, str(patch), "--output", str(out), "--json")
    assert code == 0, err
    assert (out / "model_index.json").exists() and json.loads(stdout)["output"] == str(out)
    fused = load_base(str(out))
    assert type(fused.family) is type(load_base(folder).family)
    code, _, err = run(capsys, "edit", "Elon Musk", "--base", folder, "-o", str(tmp_path / "e.safetensors"))
    assert code == 2 and "closed-form edit is not offered" in err and len(err.strip().splitlines()) == 1


def test_a_start_from_zero_with_too_few_samples_says_so(mmdit_dirs):
    """SD3/Flux have no closed-form start: fewer samples than the budget from zero (measured to forget) warn."""
    import warnings

    base = load_base(str(mmdit_dirs["sd3"]))
    with pytest.warns(UserWarning, match=r"too few from zero.*150 x 8"):
        train_patch(base, ["Elon Musk"], TrainConfig(**FAST), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # chosen explicitly: the user knows the start
        train_patch(base, ["Elon Musk"], TrainConfig(**FAST, init="zero"), progress=False)
