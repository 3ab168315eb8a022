"""Applying patches: stock diffusers equals our apply, removal is exact, fusing equals the unfused stack."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import random_patch, render

from fmn_patch.errors import BaseMismatchError, FmnPatchError
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import (
    BaseMismatchWarning,
    apply_patches,
    fuse_patches,
    remove_patches,
    save_pipeline,
)
from fmn_patch.format import Patch


def _target_weights(pipe) -> dict[str, torch.Tensor]:
    return {k: v.weight.detach().clone() for k, v in pipe.family.adapters.targets().items()}


def test_stock_diffusers_load_equals_our_apply(kind, pipeline_dirs, tmp_path):
    folder = str(pipeline_dirs[kind])
    pipe = load_base(folder)
    patch = random_patch(pipe, seed=1)
    path = patch.save(tmp_path / "p.safetensors")
    base_img = render(pipe)

    apply_patches(pipe, [Patch.load(path)])
    ours = render(pipe)

    stock = load_base(folder)  # stock diffusers path: nothing of fmn_patch touches the LoRA load
    stock.pipe.load_lora_weights(str(path))
    theirs = render(stock)

    assert not torch.allclose(base_img, ours, atol=1e-3), "the patch should change the images"
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_stock_load_in_fresh_process_without_fmn_patch(pipeline_dirs, tmp_path):
    """The file loads in a Python that never imports fmn_patch (checks imports, not just the result)."""
    import subprocess
    import sys

    pipe = load_base(str(pipeline_dirs["sd1"]))
    patch = random_patch(pipe, seed=3)
    path = patch.save(tmp_path / "p.safetensors")
    apply_patches(pipe, [patch])
    torch.save(
        render(pipe), tmp_path / "ours.pt"
    )  # our own output, compared in the child (tensor file, trusted)
    code = (
        "import sys, torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        f"pipe = StableDiffusionPipeline.from_pretrained({str(pipeline_dirs['sd1'])!r})\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        f"pipe.load_lora_weights({str(path)!r})\n"
        "img = pipe('a photo of bob', num_inference_steps=2, guidance_scale=3.0, output_type='pt', height=32,"
        " width=32, generator=torch.Generator().manual_seed(0)).images\n"
        f"ours = torch.load({str(tmp_path / 'ours.pt')!r}, weights_only=True)\n"
        "assert 'fmn_patch' not in sys.modules\n"
        "assert torch.allclose(img, ours, atol=1e-6), float((img - ours).abs().max())\n"
        "print('same')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "same" in out.stdout


def test_remove_restores_base_bit_for_bit(kind, pipeline_dirs):
    pipe = load_base(str(pipeline_dirs[kind]))
    before = _target_weights(pipe)
    base_img = render(pipe)
    names = apply_patches(pipe, [random_patch(pipe, seed=1), random_patch(pipe, seed=2)], [1.0, 0.5])
    assert len(names) == 2
    remove_patches(pipe, names)
    after = _target_weights(pipe)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert torch.equal(base_img, render(pipe))


def test_stack_is_weighted_sum_of_deltas(pipeline_dirs):
    pipe = load_base(str(pipeline_dirs["sd1"]))
    p1, p2 = random_patch(pipe, seed=1), random_patch(pipe, seed=2)
    base = _target_weights(pipe)
    fuse_patches(pipe, [p1, p2], [1.0, -0.5])
    fused = _target_weights(pipe)
    for m in p1.modules:
        expected = base[m] + p1.delta(m) - 0.5 * p2.delta(m)
        torch.testing.assert_close(fused[m], expected, rtol=0, atol=1e-6)


def test_fused_equals_unfused_stack(kind, pipeline_dirs, tmp_path):
    folder = str(pipeline_dirs[kind])
    unfused = load_base(folder)
    patches = [random_patch(unfused, seed=1), random_patch(unfused, seed=2)]
    apply_patches(unfused, patches, [0.7, 0.4])
    expected = render(unfused)

    fused = fuse_patches(load_base(folder), patches, [0.7, 0.4])
    assert not getattr(fused.pipe.unet, "peft_config", None)
    out = save_pipeline(fused, tmp_path / "fused")
    reloaded = load_base(str(out))
    torch.testing.assert_close(render(reloaded), expected, rtol=0, atol=1e-4)


def test_save_pipeline_refuses_existing_without_overwrite(sd1, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FmnPatchError, match="overwrite"):
        save_pipeline(sd1, tmp_path / "out")
    save_pipeline(sd1, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "model_index.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_shape_mismatch_names_the_module(pipeline_dirs):
    sd1 = load_base(str(pipeline_dirs["sd1"]))
    sd2 = load_base(str(pipeline_dirs["sd2"]))
    patch = random_patch(sd2)
    with pytest.raises(BaseMismatchError, match=r"shape mismatch at .*attn2\.to_[kv]"):
        apply_patches(sd1, [patch])
    assert not getattr(sd1.pipe.unet, "peft_config", None), "nothing may be applied after a refusal"


def test_missing_module_is_an_error(pipeline_dirs):
    sdxl = load_base(str(pipeline_dirs["sdxl"]))
    sd1 = load_base(str(pipeline_dirs["sd1"]))
    with pytest.raises(BaseMismatchError, match="does not exist in this UNet"):
        apply_patches(sdxl, [random_patch(sd1)])


def test_base_hash_mismatch_warns_or_refuses(pipeline_dirs):
    pipe = load_base(str(pipeline_dirs["sd1"]))
    patch = random_patch(pipe)
    patch = patch.with_info(base_hash="0" * 64, base_model="other/base")
    with pytest.warns(BaseMismatchWarning, match="other/base"):
        apply_patches(pipe, [patch])
    pipe = load_base(str(pipeline_dirs["sd1"]))
    with pytest.raises(BaseMismatchError, match="--strict"):
        apply_patches(pipe, [patch], strict=True)


def test_matching_base_gives_no_warning(sd1):
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseMismatchWarning)
        apply_patches(sd1, [random_patch(sd1)])


def test_weights_must_match_patches(sd1):
    with pytest.raises(FmnPatchError, match="2 weights for 3 patches"):
        apply_patches(sd1, [random_patch(sd1, seed=i) for i in range(3)], [1.0, 1.0])
