"""The MMDiT families (SD3.5-like, Flux-like) on tiny pipelines built from configs: stock diffusers loads our patch
to the same images, removal is exact, merge equals stack, export re-imports where diffusers reads it, and bad
inputs are refused as for the UNet family."""

from __future__ import annotations

import re
import warnings

import pytest
import safetensors.torch
import torch
from conftest import random_patch, render

from fmn_patch.errors import BaseMismatchError, FmnPatchError, PatchFileError
from fmn_patch.families.base import load_base
from fmn_patch.families.export import export_kohya, to_kohya
from fmn_patch.families.flux import FluxFamily
from fmn_patch.families.sd3 import SD3Family
from fmn_patch.families.stack import (
    BaseMismatchWarning,
    apply_patches,
    fuse_patches,
    remove_patches,
    save_pipeline,
)
from fmn_patch.format import Patch
from fmn_patch.format.merge import merge_patches


def _weights(base) -> dict[str, torch.Tensor]:
    return {k: v.weight.detach().clone() for k, v in base.family.adapters.targets().items()}


def test_family_is_detected_from_the_folder(mmdit_dirs):
    sd3, flux = load_base(str(mmdit_dirs["sd3"])), load_base(str(mmdit_dirs["flux"]))
    assert isinstance(sd3.family, SD3Family) and isinstance(flux.family, FluxFamily)
    assert sd3.architecture == "stable-diffusion-v3.5-medium" and flux.architecture == "Flux.1-dev"
    assert sd3.bench == flux.bench == "real"
    # every joint block, the context_pre_only last one included; SD3.5's attn2 (image only) is no target
    assert list(sd3.family.adapters.targets()) == [
        f"transformer_blocks.{i}.attn.{p}" for i in range(3) for p in ("add_k_proj", "add_v_proj")
    ]
    assert sd3.pipe.transformer.transformer_blocks[2].context_pre_only
    # Flux: the double-stream blocks only; single-stream blocks project [text, image] together
    assert list(flux.family.adapters.targets()) == [
        f"transformer_blocks.{i}.attn.{p}" for i in range(2) for p in ("add_k_proj", "add_v_proj")
    ]


def test_stock_load_lora_weights_equals_our_apply_bit_for_bit(mkind, mmdit_dirs, tmp_path):
    folder = str(mmdit_dirs[mkind])
    ours = load_base(folder)
    patch = random_patch(ours, seed=1)
    path = patch.save(tmp_path / "p.safetensors")
    before = render(ours)
    apply_patches(ours, [Patch.load(path)])
    patched = render(ours)

    stock = load_base(folder)
    stock.pipe.load_lora_weights(str(path))  # diffusers alone reads the file
    assert not torch.allclose(before, patched, atol=1e-3), "the patch should change the images"
    assert torch.equal(patched, render(stock))


def test_remove_restores_weights_and_images_bit_for_bit(mkind, mmdit_dirs):
    base = load_base(str(mmdit_dirs[mkind]))
    before, image = _weights(base), render(base)
    names = apply_patches(base, [random_patch(base, seed=1), random_patch(base, seed=2)], [1.0, -0.5])
    remove_patches(base, names)
    after = _weights(base)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(image, render(base))
    assert not getattr(base.pipe.transformer, "peft_config", None)


def test_fuse_is_exactly_w_plus_ba_and_saves_a_plain_pipeline(mkind, mmdit_dirs, tmp_path):
    folder = str(mmdit_dirs[mkind])
    base = load_base(folder)
    patch = random_patch(base, seed=4)
    weights = _weights(base)
    fuse_patches(base, [patch])
    fused = _weights(base)
    for m in patch.modules:
        torch.testing.assert_close(fused[m], weights[m] + patch.delta(m), rtol=0, atol=1e-6)
    unfused = load_base(folder)
    apply_patches(unfused, [patch])
    reloaded = load_base(str(save_pipeline(base, tmp_path / "fused")))
    torch.testing.assert_close(render(reloaded), render(unfused), rtol=0, atol=1e-4)


def test_merge_equals_stack(mkind, mmdit_dirs):
    folder = str(mmdit_dirs[mkind])
    stacked = load_base(folder)
    p1, p2 = random_patch(stacked, seed=1), random_patch(stacked, rank=3, seed=2)
    apply_patches(stacked, [p1, p2], [0.8, 0.6])
    merged, report = merge_patches([p1, p2], [0.8, 0.6])
    assert merged.component == "transformer" and report.total == 0.0
    single = load_base(folder)
    apply_patches(single, [merged])
    torch.testing.assert_close(render(single), render(stacked), rtol=0, atol=1e-5)


def test_flux_kohya_export_reimports_in_diffusers(mmdit_dirs, tmp_path):
    folder = str(mmdit_dirs["flux"])
    ours = load_base(folder)
    patch = random_patch(ours, seed=5)
    apply_patches(ours, [patch])
    path = export_kohya(patch, tmp_path / "k.safetensors")
    tensors = safetensors.torch.load_file(str(path))
    stems = sorted({k.split(".")[0] for k in tensors})
    assert stems == ["lora_unet_double_blocks_0_txt_attn_qkv", "lora_unet_double_blocks_1_txt_attn_qkv"]
    down, up = tensors[f"{stems[0]}.lora_down.weight"], tensors[f"{stems[0]}.lora_up.weight"]
    q_rows = up.shape[0] // 3
    assert torch.equal(up[:q_rows], torch.zeros_like(up[:q_rows]))  # a K/V patch leaves q alone
    a_k, b_k = patch.factors["transformer_blocks.0.attn.add_k_proj"]
    torch.testing.assert_close((up @ down)[q_rows : 2 * q_rows], b_k @ a_k, rtol=0, atol=1e-6)
    stock = load_base(folder)
    stock.pipe.load_lora_weights(str(path))  # diffusers' own kohya Flux converter
    torch.testing.assert_close(render(stock), render(ours), rtol=0, atol=1e-5)


def test_sd3_export_refuses_with_the_reason(mmdit_dirs, tmp_path):
    base = load_base(str(mmdit_dirs["sd3"]))
    patch = random_patch(base)
    with pytest.raises(FmnPatchError, match=r"no kohya form is written for SD3.*ComfyUI"):
        to_kohya(patch)
    assert not (tmp_path / "k.safetensors").exists()


def test_patches_of_another_family_are_refused(mmdit_dirs, pipeline_dirs):
    sd3, flux = load_base(str(mmdit_dirs["sd3"])), load_base(str(mmdit_dirs["flux"]))
    sd1 = load_base(str(pipeline_dirs["sd1"]))
    with pytest.raises(BaseMismatchError, match=r"sits on 'unet'.*'transformer'"):
        apply_patches(sd3, [random_patch(sd1)])
    with pytest.raises(BaseMismatchError, match=r"sits on 'transformer'.*'unet'"):
        apply_patches(sd1, [random_patch(flux)])
    # same module names and shapes in both tiny MMDiTs: the recorded architecture tells them apart
    with pytest.raises(BaseMismatchError, match=r"made for a flux model .Flux.1-dev.; this base is a sd3"):
        apply_patches(sd3, [random_patch(flux)])
    with pytest.raises(
        BaseMismatchError, match="does not exist"
    ):  # SD3's block 2 is not in the Flux-like model
        apply_patches(flux, [random_patch(sd3).with_info(architecture="Flux.1-dev")])
    wide = random_patch(flux)
    a, b = wide.factors["transformer_blocks.0.attn.add_k_proj"]
    wide.factors["transformer_blocks.0.attn.add_k_proj"] = (torch.zeros(a.shape[0], 48), b)
    with pytest.raises(BaseMismatchError, match=r"shape mismatch at transformer_blocks\.0\.attn\.add_k_proj"):
        apply_patches(flux, [wide])
    assert not getattr(flux.pipe.transformer, "peft_config", None), "nothing may be applied after a refusal"


def test_base_hash_mismatch_warns_or_refuses(mmdit_dirs):
    base = load_base(str(mmdit_dirs["sd3"]))
    patch = random_patch(base).with_info(base_hash="0" * 64, base_model="other/sd35")
    with pytest.warns(BaseMismatchWarning, match="other/sd35"):
        apply_patches(base, [patch])
    with pytest.raises(BaseMismatchError, match="--strict"):
        apply_patches(load_base(str(mmdit_dirs["sd3"])), [patch], strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseMismatchWarning)
        apply_patches(load_base(str(mmdit_dirs["sd3"])), [random_patch(base)])


@pytest.mark.parametrize(
    "module",
    [
        "single_transformer_blocks.0.attn.to_k",  # Flux single stream: would move image keys too
        "transformer_blocks.0.attn2.to_k",  # SD3.5's image-only attention
        "transformer_blocks.0.attn.to_k",  # the image stream's keys
        "transformer_blocks.0.attn.add_q_proj",
    ],
)
def test_modules_other_than_text_kv_are_refused(mmdit_dirs, tmp_path, module):
    factors = {module: (torch.zeros(2, 32), torch.zeros(32, 2))}
    with pytest.raises(
        FmnPatchError, match=f"module '{re.escape(module)}' of 'transformer' is not a text-side"
    ):
        Patch(factors, component="transformer")
    good = random_patch(load_base(str(mmdit_dirs["flux"])))
    tensors = {**good.state_dict(), f"transformer.{module}.lora_A.weight": torch.zeros(2, 32)}
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata=good.header())
    with pytest.raises(PatchFileError, match=re.escape(module)):
        Patch.load(path)


def test_capture_reports_image_to_text_attention_and_leaves_the_output(mkind, mmdit_dirs):
    base = load_base(str(mmdit_dirs[mkind]))
    family = base.family
    cond = family.text.encode(["a red circle", ""])
    x0 = torch.randn(2, *family.images.latent_shape(), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 700])
    x_t = family.noise.add_noise(x0, torch.zeros_like(x0), t)
    plain = family.noise.denoise(x_t, t, cond)
    maps: list[tuple[str, torch.Tensor]] = []
    with family.noise.capture_attention(lambda n, p: maps.append((n, p))) as names:
        captured = family.noise.denoise(x_t, t, cond)
    assert torch.equal(plain, captured)
    assert [n for n, _ in maps] == names == family.adapters.attention_layers()
    tokens = family.text.max_length
    for _, probs in maps:  # (B, heads, image tokens, text tokens): part of a softmax over image and text keys
        assert probs.shape[0] == 2 and probs.shape[-1] == tokens and probs.shape[2] == 64
        assert float(probs.sum(-1).max()) < 1.0 and float(probs.min()) >= 0.0


def test_concept_positions_in_every_encoder_part(mmdit_dirs):
    sd3, flux = load_base(str(mmdit_dirs["sd3"])), load_base(str(mmdit_dirs["flux"]))
    clip = sd3.family.text.clip_length
    # SD3: CLIP part (BOS a red circle EOS ...) then T5 (▁a ▁red ▁circle </s> ...)
    assert sd3.family.text.place("a red circle", "circle").positions() == (3, clip + 2)
    assert sd3.family.text.place("a red circle", "circle").positions(after=True) == (3, 4, clip + 2, clip + 3)
    assert flux.family.text.place("a red circle", "circle").positions() == (2,)  # T5 alone
    assert sd3.family.text.max_length == clip + 32 and flux.family.text.max_length == 32


def test_flow_parametrisation(mkind, mmdit_dirs):
    family = load_base(str(mmdit_dirs[mkind])).family
    x0, noise = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    t = torch.tensor([0, 500, 999])
    s = family.noise.sigma(t, x0)
    assert 0 < float(s[0]) < float(s[1]) < float(s[2]) == pytest.approx(1.0)
    x_t = family.noise.add_noise(x0, noise, t)
    # x_t moves along noise - x0: the target is the velocity of that straight path
    torch.testing.assert_close(x_t, x0 + s.view(-1, 1, 1, 1) * family.noise.target(x0, noise, t))


def test_preserve_inputs_are_recorded_per_block(mkind, mmdit_dirs):
    family = load_base(str(mmdit_dirs[mkind])).family
    inputs = family.noise.preserve_inputs(["a red circle", "bob"])
    assert set(inputs) == set(family.adapters.targets())
    k, v = inputs["transformer_blocks.1.attn.add_k_proj"], inputs["transformer_blocks.1.attn.add_v_proj"]
    assert k is v and k.shape == (
        2 * 2 * family.text.max_length,
        family.adapters.target_shapes()["transformer_blocks.1.attn.add_k_proj"][1],
    )
    again = family.noise.preserve_inputs(["a red circle", "bob"])
    assert all(torch.equal(inputs[n], again[n]) for n in inputs)  # seeded
    # from block 1 on the text stream has read the image: other latents, other inputs
    other = family.noise.preserve_inputs(
        ["a red circle", "bob"], torch.ones(1, *family.images.latent_shape())
    )
    assert not torch.equal(k, other["transformer_blocks.1.attn.add_k_proj"])


def test_edit_is_refused_with_a_reason(mmdit_dirs):
    from fmn_patch.methods.edit import edit_patch

    base = load_base(str(mmdit_dirs["sd3"]))
    with pytest.raises(FmnPatchError, match=r"closed-form edit is not offered for sd3.*fmnpatch train"):
        edit_patch(base, ["circle"])


def _comfy_stems(kind: str, blocks: int) -> set[str]:
    """LoRA key stems ComfyUI maps onto an SD3 / Flux model's text q/k/v (comfy/lora.py, model_lora_keys_unet):
    ``transformer.<diffusers module>`` for both (through mmdit_to_diffusers / flux_to_diffusers, which send
    ``transformer_blocks.N.attn.add_{q,k,v}_proj`` to row slices of the fused context qkv), and for Flux also
    kohya's ``lora_unet_<original name>``, the fused ``double_blocks.N.txt_attn.qkv`` with rows q, k, v."""
    stems = {f"transformer.transformer_blocks.{i}.attn.add_{p}_proj" for i in range(blocks) for p in "qkv"}
    if kind == "flux":
        stems |= {f"lora_unet_double_blocks_{i}_txt_attn_qkv" for i in range(blocks)}
    return stems


def test_files_use_the_keys_comfyui_maps(mkind, mmdit_dirs, tmp_path):
    base = load_base(str(mmdit_dirs[mkind]))
    blocks = len(base.family.adapters.attention_layers())
    stems = _comfy_stems(mkind, blocks)
    patch = random_patch(base)
    native = safetensors.torch.load_file(str(patch.save(tmp_path / "p.safetensors")))
    # diffusers form, no .alpha: ComfyUI then scales by 1, and alpha is folded into lora_B
    assert {k.rsplit(".", 2)[0] for k in native} <= stems
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in native)
    if mkind == "flux":
        kohya = safetensors.torch.load_file(str(export_kohya(patch, tmp_path / "k.safetensors")))
        assert {
            k.rsplit(".", 2)[0] if "lora_" in k.rsplit(".", 2)[-2] else k.rsplit(".", 1)[0] for k in kohya
        } <= stems
        for i in range(
            blocks
        ):  # ComfyUI: (alpha / rank) * up @ down onto the fused (3 * width, width) weight
            stem = f"lora_unet_double_blocks_{i}_txt_attn_qkv"
            up, down, alpha = (
                kohya[f"{stem}.lora_up.weight"],
                kohya[f"{stem}.lora_down.weight"],
                kohya[f"{stem}.alpha"],
            )
            fused = float(alpha) / down.shape[0] * (up @ down)
            width = fused.shape[1]
            expected = torch.cat(
                [torch.zeros(width, width)]
                + [patch.delta(f"transformer_blocks.{i}.attn.add_{p}_proj") for p in "kv"]
            )
            torch.testing.assert_close(fused, expected, rtol=0, atol=1e-6)
