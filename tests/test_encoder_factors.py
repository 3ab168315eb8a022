"""Text-encoder factors in a patch: the CLIP encoders' self-attention and MLP layers, beside the key/value factors.

Checked here on every family's tiny pipeline: the file loads in stock diffusers and fuses to exactly what ours
fuses; apply/remove restore every weight; the kohya export uses the stems ComfyUI and sd-scripts map and loads back
through diffusers' own converter; merge, inspect and the card handle the new factors as they handle K/V; hostile
files and wrong bases are refused in one line."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import safetensors.torch
import torch
from conftest import random_patch, with_encoders
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmn_patch.cli.app import main
from fmn_patch.errors import BaseMismatchError, FmnPatchError, PatchFileError
from fmn_patch.families.base import as_base, load_base
from fmn_patch.families.export import export_kohya
from fmn_patch.families.stack import (
    BaseMismatchWarning,
    apply_patches,
    check_compatible,
    fuse_patches,
    remove_patches,
)
from fmn_patch.format import Patch
from fmn_patch.format.merge import merge_patches
from fmn_patch.hub.card import model_card

ALL = ("sd1", "sd2", "sdxl", "sd3", "flux")
#: The CLIP encoders each tiny pipeline has (Flux's and SD3's T5 has no patchable layer here).
ENCODERS = {
    "sd1": ["text_encoder"],
    "sd2": ["text_encoder"],
    "sdxl": ["text_encoder", "text_encoder_2"],
    "sd3": ["text_encoder", "text_encoder_2"],
    "flux": ["text_encoder"],
}


@pytest.fixture(params=ALL)
def any_kind(request):
    return request.param


def folder_of(kind, pipeline_dirs, mmdit_dirs):
    return str((mmdit_dirs if kind in ("sd3", "flux") else pipeline_dirs)[kind])


def encoder_weights(base) -> dict[str, torch.Tensor]:
    return {
        f"{c}.{n}": p.detach().clone()
        for c in ENCODERS_OF(base)
        for n, p in getattr(base.pipe, c).state_dict().items()
    }


def ENCODERS_OF(base) -> list[str]:
    return list(base.family.adapters.encoder_targets())


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


# --------------------------------------------------------------------------------------- the file
def test_every_family_offers_its_clip_encoders_and_a_patch_with_them_round_trips(
    any_kind, pipeline_dirs, mmdit_dirs, tmp_path
):
    base = load_base(folder_of(any_kind, pipeline_dirs, mmdit_dirs))
    assert ENCODERS_OF(base) == ENCODERS[any_kind]
    patch = with_encoders(base, random_patch(base), layers=2)
    path = patch.save(tmp_path / "p.safetensors")
    loaded = Patch.load(path, require_hash=True)
    assert loaded.verified and loaded.encoder_modules == patch.encoder_modules
    assert loaded.tensor_hash() == patch.tensor_hash()
    for c, factors in patch.encoders.items():
        for m, (a, b) in factors.items():
            assert torch.equal(loaded.encoders[c][m][0], a) and torch.equal(loaded.encoders[c][m][1], b)
    header = safetensors.safe_open(str(path), "pt").metadata()
    metadata = json.loads(header["lora_adapter_metadata"])
    for c in ENCODERS[any_kind]:  # peft matches the names by their tail: with and without CLIP's text_model.
        assert all(not t.startswith("text_model.") for t in metadata[f"{c}.target_modules"])
        assert json.loads(header["fmn_patch.encoders"])[c] == {"modules": 12, "rank": 2}
    # a default patch is unchanged: no encoder keys, no encoder header
    plain = random_patch(base).save(tmp_path / "plain.safetensors")
    assert "fmn_patch.encoders" not in safetensors.safe_open(str(plain), "pt").metadata()


def test_stock_diffusers_loads_and_fuses_exactly_what_ours_fuses(
    any_kind, pipeline_dirs, mmdit_dirs, tmp_path
):
    folder = folder_of(any_kind, pipeline_dirs, mmdit_dirs)
    ours = load_base(folder)
    patch = with_encoders(ours, random_patch(ours))
    path = patch.save(tmp_path / "p.safetensors")
    before = encoder_weights(ours)
    fuse_patches(ours, [Patch.load(path)], strict=True)
    after = encoder_weights(ours)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(".layers.1." in k for k in changed)  # the last layer of each encoder, nothing else
    stock = load_base(folder)
    stock.pipe.load_lora_weights(str(path))
    stock.pipe.fuse_lora(components=[stock.family.adapters.component, *ENCODERS[any_kind]])
    stock.pipe.unload_lora_weights()
    for c in [stock.family.adapters.component, *ENCODERS[any_kind]]:
        for (n1, p1), (n2, p2) in zip(
            getattr(ours.pipe, c).state_dict().items(),
            getattr(stock.pipe, c).state_dict().items(),
            strict=True,
        ):
            assert n1 == n2 and torch.equal(p1, p2), f"{c}.{n1}"


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_applied_encoder_factors_change_the_prompt_states_and_removal_restores_them_bit_for_bit(
    kind, pipeline_dirs, tmp_path
):
    base = load_base(str(pipeline_dirs[kind]))
    before_weights = encoder_weights(base)
    states = base.family.text.encode(["a photo of bob"])
    # SDXL's denoiser reads its encoders' next-to-last layer: the last one reaches it through the pooled vector only
    patch = with_encoders(base, random_patch(base), layers=2)
    names = apply_patches(base, [patch], strict=True)
    patched = base.family.text.encode(["a photo of bob"])
    assert not torch.equal(states.states, patched.states)
    for key, value in (states.added or {}).items():
        assert key == "time_ids" or not torch.equal(value, patched.added[key]), key  # the pooled vector
    remove_patches(base, names)
    again = base.family.text.encode(["a photo of bob"])
    assert torch.equal(again.states, states.states)
    assert all(torch.equal(v, again.added[k]) for k, v in (states.added or {}).items())
    after = encoder_weights(base)
    assert before_weights.keys() == after.keys()
    assert all(torch.equal(before_weights[k], after[k]) for k in before_weights)


# --------------------------------------------------------------------------------------- kohya
def _comfy_clip_stems(kind: str, layers: int) -> dict[str, set[str]]:
    """The stems ComfyUI maps onto each CLIP encoder (comfy/lora.py, model_lora_keys_clip, LORA_CLIP_MAP): clip_l
    (or SD2's clip_h) under ``lora_te_``, ``lora_te1_`` and ``text_encoder.text_model...``; SDXL's and SD3's clip_g
    under ``lora_te2_`` and ``text_encoder_2.text_model...``. sd-scripts writes ``lora_te`` for one encoder,
    ``lora_te1``/``lora_te2`` for two (networks/lora.py), ``lora_te1`` for Flux's CLIP (networks/lora_flux.py)."""
    clip_map = {
        p: p.replace(".", "_") for p in ("mlp.fc1", "mlp.fc2", *(f"self_attn.{x}_proj" for x in "kqv"))
    }
    clip_map["self_attn.out_proj"] = "self_attn_out_proj"

    def stems(prefixes, dotted):
        found = set()
        for b in range(layers):
            for module, part in clip_map.items():
                found |= {f"{p}_text_model_encoder_layers_{b}_{part}" for p in prefixes}
                found.add(f"{dotted}.text_model.encoder.layers.{b}.{module}")
        return found

    out = {"text_encoder": stems(("lora_te", "lora_te1"), "text_encoder")}
    if len(ENCODERS[kind]) == 2:
        out["text_encoder_2"] = stems(("lora_te2",), "text_encoder_2")
    return out


SD_SCRIPTS = {
    "sd1": {"text_encoder": "lora_te"},
    "sd2": {"text_encoder": "lora_te"},
    "flux": {"text_encoder": "lora_te1"},
}
SD_SCRIPTS["sdxl"] = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl", "flux"])
def test_kohya_export_uses_the_stems_comfyui_and_sd_scripts_map_and_loads_in_stock_diffusers(
    kind, pipeline_dirs, mmdit_dirs, tmp_path
):
    folder = folder_of(kind, pipeline_dirs, mmdit_dirs)
    base = load_base(folder)
    patch = with_encoders(base, random_patch(base), layers=2)
    native = safetensors.torch.load_file(str(patch.save(tmp_path / "p.safetensors")))
    kohya_path = export_kohya(patch, tmp_path / "p.kohya.safetensors")
    kohya = safetensors.torch.load_file(str(kohya_path))
    comfy = _comfy_clip_stems(kind, layers=2)
    for c in ENCODERS[kind]:
        written = {k.rsplit(".", 2)[0] for k in kohya if k.startswith(SD_SCRIPTS[kind][c] + "_text_model")}
        assert len(written) == 12 and written <= comfy[c], sorted(written - comfy[c])[:3]
        assert all(float(kohya[f"{s}.alpha"]) == kohya[f"{s}.lora_down.weight"].shape[0] for s in written)
        dotted = {k.rsplit(".", 2)[0] for k in native if k.startswith(f"{c}.")}
        assert len(dotted) == 12 and dotted <= comfy[c]  # the native file's keys, as ComfyUI reads them too
    loaded = Patch.load(kohya_path, require_hash=True)
    assert loaded.form == "kohya" and loaded.encoder_modules == patch.encoder_modules
    for c, factors in patch.encoders.items():
        for m, (a, b) in factors.items():
            a2, b2 = loaded.encoders[c][m]
            assert torch.equal(b2 @ a2, b @ a)
    ours = load_base(folder)
    fuse_patches(ours, [patch], strict=True)
    stock = load_base(folder)
    stock.pipe.load_lora_weights(str(kohya_path))  # diffusers' own kohya conversion
    stock.pipe.fuse_lora(components=[stock.family.adapters.component, *ENCODERS[kind]])
    stock.pipe.unload_lora_weights()
    for c in ENCODERS[kind]:
        for (n1, p1), (_, p2) in zip(
            getattr(ours.pipe, c).state_dict().items(),
            getattr(stock.pipe, c).state_dict().items(),
            strict=True,
        ):
            torch.testing.assert_close(p1, p2, rtol=0, atol=1e-6, msg=f"{c}.{n1}")


# --------------------------------------------------------------------------------------- merge, inspect, card
@pytest.mark.parametrize("rank", [None, 4, "auto"])
def test_merge_sums_encoder_deltas_as_it_sums_key_value_deltas(sd1, rank):
    with_te = with_encoders(sd1, random_patch(sd1, seed=1), seed=3)
    plain = random_patch(sd1, seed=2)
    merged, report = merge_patches([with_te, plain], [0.5, 2.0], rank=rank)
    assert merged.encoder_modules == with_te.encoder_modules
    for m, (a, b) in with_te.encoders["text_encoder"].items():
        a2, b2 = merged.encoders["text_encoder"][m]
        torch.testing.assert_close(b2 @ a2, 0.5 * (b @ a), rtol=0, atol=1e-5)
        assert f"text_encoder.{m}" in report.residuals
    twice, _ = merge_patches([with_te, with_te], rank=rank)
    for m, (a, b) in with_te.encoders["text_encoder"].items():
        a2, b2 = twice.encoders["text_encoder"][m]
        torch.testing.assert_close(b2 @ a2, 2 * (b @ a), rtol=0, atol=1e-5)


def test_inspect_and_the_card_name_the_encoder_factors(capsys, sd1, tmp_path):
    path = with_encoders(sd1, random_patch(sd1)).save(tmp_path / "p.safetensors")
    code, out, _ = run(capsys, "inspect", str(path), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["encoders"]["text_encoder"]["modules"] == 6
    assert "text_encoder.text_model.encoder.layers.1.mlp.fc1" in summary["norms"]
    code, out, _ = run(capsys, "inspect", str(path))
    assert code == 0 and "+ text_encoder rank 2 on 6 modules" in out
    card = str(model_card(Patch.load(path), repo_id="acme/p", filename="p.safetensors"))
    assert "with a LoRA on text_encoder CLIP self-attention" in card
    plain = random_patch(sd1).save(tmp_path / "plain.safetensors")
    code, out, _ = run(capsys, "inspect", str(plain), "--json")
    assert json.loads(out)["encoders"] == {}


# --------------------------------------------------------------------------------------- hostile input
def _tensors(patch: Patch) -> dict[str, torch.Tensor]:
    return dict(patch.state_dict())


def _save_raw(tensors, header, path):
    safetensors.torch.save_file(tensors, str(path), metadata=header)
    return path


def test_hostile_encoder_keys_are_refused_in_one_line(sd1, tmp_path):
    patch = with_encoders(sd1, random_patch(sd1))
    header = patch.header()
    del header["fmn_patch.tensor_hash"], header["modelspec.hash_sha256"]
    key = "text_encoder.text_model.encoder.layers.1.mlp.fc1"
    cases = {
        "unknown layer": (
            {**_tensors(patch), f"{key[:-3]}fc9.lora_A.weight": torch.ones(2, 32)},
            "not a LoRA factor",
        ),
        "embedding": (
            {
                **_tensors(patch),
                "text_encoder.text_model.embeddings.token_embedding.lora_A.weight": torch.ones(2, 4),
            },
            "not a LoRA factor",
        ),
        "T5 component": (
            {**_tensors(patch), "text_encoder_3.encoder.block.0.lora_A.weight": torch.ones(2, 4)},
            "not",
        ),
        "half a pair": (
            {k: v for k, v in _tensors(patch).items() if k != f"{key}.lora_B.weight"},
            "has no lora_B factor",
        ),
        "rank mismatch": (
            {**_tensors(patch), f"{key}.lora_B.weight": torch.ones(64, 3)},
            "inconsistent shapes",
        ),
        "nan": ({**_tensors(patch), f"{key}.lora_A.weight": torch.full((2, 32), float("nan"))}, "NaN"),
        "encoders only": (
            {k: v for k, v in _tensors(patch).items() if k.startswith("text_encoder.")},
            "key/value factors of 0 components",
        ),
    }
    for name, (tensors, message) in cases.items():
        path = _save_raw(tensors, header, tmp_path / f"{name}.safetensors")
        with pytest.raises(PatchFileError, match=message) as e:
            Patch.load(path)
        assert "\n" not in str(e.value), name


def test_encoder_factors_for_another_encoder_are_refused_before_anything_is_loaded(pipeline_dirs, mmdit_dirs):
    sd1 = load_base(str(pipeline_dirs["sd1"]))
    sd2 = load_base(str(pipeline_dirs["sd2"]))
    sdxl = load_base(str(pipeline_dirs["sdxl"]))
    flux = load_base(str(mmdit_dirs["flux"]))
    # shapes differ: sd2's CLIP (48 wide) is not sd1's (32)
    patch = with_encoders(sd1, random_patch(sd1))
    own2 = random_patch(sd2)
    wrong = Patch(own2.factors, own2.info, "unet", patch.encoders)
    with pytest.raises(
        BaseMismatchError, match=r"shape mismatch at text_encoder\.text_model.*another text encoder"
    ):
        check_compatible(sd2, wrong)
    with pytest.raises(BaseMismatchError):
        apply_patches(sd2, [wrong])
    assert sd2.family.adapters.adapter_names() == []
    # an encoder the base does not have: sd1 has no text_encoder_2; Flux's second encoder is T5
    second = with_encoders(sdxl, random_patch(sdxl)).encoders["text_encoder_2"]
    for base in (sd1, flux):
        own = random_patch(base)
        with pytest.raises(
            BaseMismatchError, match="text_encoder_2, a CLIP text encoder this base does not have"
        ):
            apply_patches(base, [Patch(own.factors, own.info, own.component, {"text_encoder_2": second})])
        assert base.family.adapters.adapter_names() == []
    # a layer the base lacks (sd1's tiny CLIP has two layers)
    a, b = next(iter(patch.encoders["text_encoder"].values()))
    deep = {"text_encoder": {"text_model.encoder.layers.7.mlp.fc1": (a, b)}}
    own = random_patch(sd1)
    with pytest.raises(BaseMismatchError, match=r"layers\.7\.mlp\.fc1 does not exist"):
        check_compatible(sd1, Patch(own.factors, own.info, "unet", deep))
    with pytest.raises(FmnPatchError, match="'unet' is not a text encoder"):
        Patch(own.factors, own.info, "unet", {"unet": own.factors})


def _recorded(base, patch: Patch) -> Patch:
    """``patch`` recording ``base``'s text-encoder hash, as ``with_encoder_factors`` makes it."""
    return Patch(
        patch.factors,
        dataclasses.replace(patch.info, encoder_hash=base.family.identity.encoder_hash()),
        patch.component,
        patch.encoders,
    )


def test_a_text_encoder_factor_on_a_base_whose_encoder_differs_warns_and_strict_refuses(
    pipeline_dirs, tmp_path
):
    folder = str(pipeline_dirs["sd1"])
    base = load_base(folder)
    patch = _recorded(base, with_encoders(base, random_patch(base))).save(tmp_path / "p.safetensors")
    loaded = Patch.load(patch)
    assert loaded.info.encoder_hash == base.family.identity.encoder_hash() is not None
    assert len(loaded.info.encoder_hash) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same base: no warning
        check_compatible(base, loaded, strict=True)
    # a fine-tuned encoder of the same shapes: the K/V hash is unchanged, the encoder hash is not
    tuned = load_base(folder)
    with torch.no_grad():
        next(iter(tuned.family.adapters.encoder_targets()["text_encoder"].values())).weight.mul_(1.01)
    assert tuned.family.identity.target_hash() == base.family.identity.target_hash()
    assert tuned.family.identity.encoder_hash() != base.family.identity.encoder_hash()
    with pytest.warns(BaseMismatchWarning, match="other text encoders"):
        check_compatible(tuned, loaded)
    with pytest.raises(
        BaseMismatchError, match=r"other text encoders \(hash [0-9a-f]{12}, this base's [0-9a-f]{12}\)"
    ):
        apply_patches(tuned, [loaded], strict=True)
    assert tuned.family.adapters.adapter_names() == []
    # a patch without encoder factors is not checked against the encoders (its hash, if any, is not about them)
    plain = Patch(loaded.factors, loaded.info, loaded.component)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_compatible(tuned, plain, strict=True)


def test_the_encoder_hash_does_not_depend_on_the_load_dtype_and_is_none_without_clip(
    pipeline_dirs, mmdit_dirs
):
    folder = str(pipeline_dirs["sdxl"])
    f32 = load_base(folder).family.identity.encoder_hash()
    for dtype in ("bfloat16", "float16"):
        assert load_base(folder, dtype=dtype).family.identity.encoder_hash() == f32, dtype
    # both of SDXL's encoders are covered: changing the second changes the hash
    changed = load_base(folder, dtype="bfloat16")
    with torch.no_grad():
        next(iter(changed.family.adapters.encoder_targets()["text_encoder_2"].values())).weight.add_(1.0)
    assert changed.family.identity.encoder_hash() != f32
    flux = load_base(str(mmdit_dirs["flux"]))
    without = type(flux.pipe)(**{**flux.pipe.components, "text_encoder": None})
    assert as_base(without).family.identity.encoder_hash() is None


def test_merge_keeps_the_encoder_hash_its_parents_agree_on(sd1, pipeline_dirs):
    other = load_base(str(pipeline_dirs["sd1"]))
    with torch.no_grad():
        next(iter(other.family.adapters.encoder_targets()["text_encoder"].values())).weight.mul_(1.01)
    one = _recorded(sd1, with_encoders(sd1, random_patch(sd1, seed=1), seed=1))
    two = _recorded(sd1, with_encoders(sd1, random_patch(sd1, seed=2), seed=2))
    elsewhere = _recorded(other, with_encoders(sd1, random_patch(sd1, seed=3), seed=3))
    plain = random_patch(sd1, seed=4)  # no encoder factors: no say in the merged record
    assert merge_patches([one, two, plain])[0].info.encoder_hash == one.info.encoder_hash
    assert merge_patches([one, elsewhere])[0].info.encoder_hash is None
    header = merge_patches([one, two])[0].header()
    assert header["fmn_patch.encoder_hash"] == one.info.encoder_hash
    assert "fmn_patch.encoder_hash" not in plain.header()  # default files are unchanged


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layers=st.sets(
        st.sampled_from(
            [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.out_proj",
                "mlp.fc1",
                "mlp.fc2",
            ]
        ),
        min_size=1,
    ),
    rank=st.integers(1, 8),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_any_subset_of_encoder_layers_round_trips_through_file_and_kohya_bit_for_bit(
    sd1, tmp_path_factory, layers, rank, dtype, seed
):
    gen = torch.Generator().manual_seed(seed)
    targets = sd1.family.adapters.encoder_targets()["text_encoder"]
    encoders = {
        "text_encoder": {
            f"text_model.encoder.layers.0.{part}": (
                torch.randn(
                    rank, targets[f"text_model.encoder.layers.0.{part}"].in_features, generator=gen
                ).to(dtype),
                torch.randn(
                    targets[f"text_model.encoder.layers.0.{part}"].out_features, rank, generator=gen
                ).to(dtype),
            )
            for part in layers
        }
    }
    own = random_patch(sd1)
    patch = Patch(own.factors, own.info, "unet", encoders)
    folder = tmp_path_factory.mktemp("rt")
    loaded = Patch.load(patch.save(folder / "p.safetensors"))
    assert loaded.tensor_hash() == patch.tensor_hash()
    back = Patch.load(export_kohya(patch, folder / "k.safetensors"))
    assert back.encoder_modules == patch.encoder_modules
    for m, (a, b) in encoders["text_encoder"].items():
        a2, b2 = back.encoders["text_encoder"][m]
        assert torch.equal(a2, a) and torch.equal(b2, b)


def test_applying_several_patches_hashes_the_encoders_once(sd1, monkeypatch):
    patches = [_recorded(sd1, with_encoders(sd1, random_patch(sd1, seed=s), seed=s)) for s in (1, 2, 3)]
    identity = type(sd1.family.identity)
    calls = []
    real = identity.encoder_hash
    monkeypatch.setattr(identity, "encoder_hash", lambda self: calls.append(1) or real(self))
    names = apply_patches(sd1, patches, strict=True)
    remove_patches(sd1, names)
    assert len(calls) == 1
