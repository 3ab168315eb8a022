"""The reference-latent cache is keyed on everything that decides the images, and bypassed with adapters loaded."""

from __future__ import annotations

import torch
from conftest import random_patch

from fmn_patch.families.base import load_base
from fmn_patch.families.references import cache_dir, cache_key, generated_latents
from fmn_patch.families.stack import apply_patches, remove_patches

KEY = {"prompts": ["a circle"], "seeds": [0], "steps": 2, "guidance": 3.0}


def _key(base) -> str:
    return cache_key(base, KEY["prompts"], KEY["seeds"], steps=KEY["steps"], guidance=KEY["guidance"])


def test_cache_key_changes_with_anything_that_changes_the_images(pipeline_dirs):
    folder = str(pipeline_dirs["sd1"])
    base = load_base(folder)
    key = _key(base)
    assert _key(load_base(folder)) == key  # the same files: the same key
    for change in ("vae", "text_encoder", "unet_resnet"):
        other = load_base(folder)
        module = {"vae": other.pipe.vae, "text_encoder": other.pipe.text_encoder}.get(change)
        with torch.no_grad():
            if module is None:  # a weight of the UNet that is not an attn2 key/value projection
                weight = next(p for n, p in other.pipe.unet.named_parameters() if "resnets" in n)
                weight.add_(0.01)
            else:
                next(module.parameters()).add_(0.01)
        assert other.family.identity.target_hash() == base.family.identity.target_hash()  # attn2 K/V alike...
        assert _key(other) != key, change  # ...but the images differ, and so does the key
    other = load_base(folder)
    other.pipe.scheduler.register_to_config(beta_end=0.02)
    assert _key(other) != key
    assert _key(load_base(folder, dtype="bfloat16")) != key
    assert cache_key(base, ["a circle"], [0], steps=3, guidance=3.0) != key


def test_cache_is_bypassed_with_adapters_loaded(pipeline_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path))
    base = load_base(str(pipeline_dirs["sd1"]))
    plain = generated_latents(base, **KEY)
    assert len(list(cache_dir().glob("*.safetensors"))) == 1
    names = apply_patches(base, [random_patch(base, scale=1.0)])
    patched = generated_latents(base, **KEY)
    remove_patches(base, names)
    assert not torch.allclose(patched, plain)  # not the cached base latents
    assert len(list(cache_dir().glob("*.safetensors"))) == 1  # and not written to the cache either
    assert torch.equal(generated_latents(base, **KEY), plain)
