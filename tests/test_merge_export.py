"""Merging equals stacking; the kohya export re-imports in diffusers to the same images."""

from __future__ import annotations

import pytest
import safetensors
import torch
from conftest import random_patch, render

from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import load_base
from fmn_patch.families.export import export_kohya
from fmn_patch.families.stack import apply_patches
from fmn_patch.families.unet import sgm_name
from fmn_patch.format import Patch
from fmn_patch.format.merge import merge_patches


def test_cat_merge_is_exact_sum_of_deltas(sd1):
    p1, p2 = random_patch(sd1, rank=2, seed=1), random_patch(sd1, rank=3, seed=2)
    merged, report = merge_patches([p1, p2], [1.0, 0.5])
    assert merged.rank == 5 and report.total == 0.0
    for m in p1.modules:
        torch.testing.assert_close(merged.delta(m), p1.delta(m) + 0.5 * p2.delta(m), rtol=0, atol=1e-6)
    assert merged.info.method == "merge"
    assert [p["weight"] for p in merged.info.parents] == [1.0, 0.5]
    assert [p["hash"] for p in merged.info.parents] == [p1.tensor_hash(), p2.tensor_hash()]


def test_merge_equals_stack_in_images(pipeline_dirs):
    folder = str(pipeline_dirs["sd1"])
    stacked = load_base(folder)
    p1, p2 = random_patch(stacked, seed=1), random_patch(stacked, seed=2)
    apply_patches(stacked, [p1, p2], [0.8, 0.6])
    merged, _ = merge_patches([p1, p2], [0.8, 0.6])
    single = load_base(folder)
    apply_patches(single, [merged])
    torch.testing.assert_close(render(single), render(stacked), rtol=0, atol=1e-5)


def test_svd_merge_exact_at_full_rank_and_reports_residual_below(sd1):
    p1, p2 = random_patch(sd1, rank=2, seed=1), random_patch(sd1, rank=2, seed=2)
    exact, report = merge_patches([p1, p2], rank=4)
    assert report.total < 1e-5
    for m in p1.modules:
        torch.testing.assert_close(exact.delta(m), p1.delta(m) + p2.delta(m), rtol=0, atol=1e-5)
    lossy, report = merge_patches([p1, p2], rank=1)
    assert lossy.rank == 1
    assert 0.0 < report.total < 1.0
    assert set(report.residuals) == set(p1.modules)
    m = p1.modules[0]
    err = float((lossy.delta(m) - exact.delta(m)).norm() / exact.delta(m).norm())
    assert err == pytest.approx(report.residuals[m], rel=1e-3)
    assert lossy.info.extra["svd_residual"]["total"] == pytest.approx(report.total)


def test_merge_round_trips_through_file(sd1, tmp_path):
    merged, _ = merge_patches([random_patch(sd1, seed=1), random_patch(sd1, seed=2, concept="bob")])
    loaded = Patch.load(merged.save(tmp_path / "m.safetensors"))
    assert loaded.concept_names == ["circle", "bob"]
    assert loaded.info.parents == merged.info.parents
    assert loaded.tensor_hash() == merged.tensor_hash()


def test_merge_refuses_mixed_architectures(pipeline_dirs):
    sd1, sd2 = load_base(str(pipeline_dirs["sd1"])), load_base(str(pipeline_dirs["sd2"]))
    with pytest.raises(FmnPatchError, match="different architectures"):
        merge_patches([random_patch(sd1), random_patch(sd2)])


def test_merge_needs_two(sd1):
    with pytest.raises(FmnPatchError, match="at least two"):
        merge_patches([random_patch(sd1)])


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_kohya_export_reimports_to_same_images(kind, pipeline_dirs, tmp_path):
    folder = str(pipeline_dirs[kind])
    ours = load_base(folder)
    patch = random_patch(ours, rank=2, seed=4)
    apply_patches(ours, [patch])
    path = export_kohya(patch, tmp_path / "k.safetensors")
    with safetensors.safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        header = f.metadata()
        alpha = f.get_tensor(next(k for k in keys if k.endswith(".alpha")))
    assert all(k.startswith("lora_unet_") for k in keys)
    assert header["ss_network_dim"] == "2" and header["ss_network_alpha"] == "2"
    assert float(alpha) == 2.0
    if kind == "sdxl":
        assert any("input_blocks_4_1_transformer_blocks_0_attn2_to_k" in k for k in keys)
    stock = load_base(folder)
    stock.pipe.load_lora_weights(str(path))
    torch.testing.assert_close(render(stock), render(ours), rtol=0, atol=1e-5)


def test_sgm_names():
    assert sgm_name("down_blocks.1.attentions.0.transformer_blocks.3.attn2.to_k", 2) == (
        "input_blocks.4.1.transformer_blocks.3.attn2.to_k"
    )
    assert sgm_name("up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_v", 2) == (
        "output_blocks.2.1.transformer_blocks.0.attn2.to_v"
    )
    assert sgm_name("mid_block.attentions.0.transformer_blocks.9.attn2.to_v", 2) == (
        "middle_block.1.transformer_blocks.9.attn2.to_v"
    )
