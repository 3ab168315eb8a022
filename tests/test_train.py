"""Training: the loss's facts, token placement, determinism, the architectures it serves, and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import render

from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import apply_patches
from fmn_patch.families.tokens import ConceptNotFoundError, place
from fmn_patch.families.unet import TARGET_REGEX
from fmn_patch.methods.losses import attention_mass, fmn_loss, resteer_loss
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.testing.tiny import write_tokenizer

FAST = dict(
    steps=4, images_per_prompt=1, image_steps=2, batch_size=2, bench="toy"
)  # the tiny vocab knows circle


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path_factory.getbasetemp() / "refcache"))


def _maps(pipe, prompt="a photo of bob"):
    maps: list[torch.Tensor] = []
    cond = pipe.family.text.encode([prompt])
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with pipe.family.noise.capture_attention(lambda _n, p: maps.append(p)):
        out = pipe.family.noise.denoise(x, t, cond)
    return maps, out, cond, x


def test_capture_processor_matches_the_default(sd1):
    maps, captured, cond, x = _maps(sd1)
    plain = sd1.family.noise.denoise(x, torch.tensor([500]), cond)
    torch.testing.assert_close(captured, plain, rtol=0, atol=1e-5)
    assert len(maps) == 7  # every attn2 layer of the tiny UNet, and only those
    for p in maps:
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))


def test_loss_is_zero_when_concept_absent_and_positive_when_present(sd1):
    maps, *_ = _maps(sd1, "a photo of bob")
    none = torch.zeros(1, 77)
    assert float(resteer_loss(maps, none).detach()) == 0.0 and float(fmn_loss(maps, none).detach()) == 0.0
    where = place(sd1.pipe.tokenizer, "a photo of bob", "bob")
    mask = torch.zeros(1, 77)
    mask[0, list(where.concept)] = 1
    assert 0 < float(resteer_loss(maps, mask)) < 1
    every = torch.ones(1, 77)
    assert float(attention_mass(maps[0], every)) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ConceptNotFoundError, match=r"not in prompt .* \(tokens \["):
        place(sd1.pipe.tokenizer, "a photo of alice", "bob")


def test_gradient_facts_of_to_k_and_to_v(sd1):
    """The re-steering loss reads attention (Q, K only): the last attn2 layer's to_v gets exactly no gradient,
    while every to_k does."""
    from peft import LoraConfig

    unet = sd1.family.adapters.denoiser
    unet.requires_grad_(False)
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=TARGET_REGEX, init_lora_weights="gaussian"))
    for name, p in unet.named_parameters():  # B starts at zero: give it values so A's gradient is informative
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    order: list[str] = []
    maps: list[torch.Tensor] = []
    cond = sd1.family.text.encode(["a photo of bob"])
    mask = torch.zeros(1, 77)
    mask[0, list(place(sd1.pipe.tokenizer, "a photo of bob", "bob").concept)] = 1

    def sink(name, probs):
        order.append(name)
        maps.append(probs)

    with sd1.family.noise.capture_attention(sink):
        sd1.family.noise.denoise(torch.randn(1, 4, 16, 16), torch.tensor([500]), cond)
    resteer_loss(maps, mask).backward()
    grads = {n: p.grad for n, p in unet.named_parameters() if "lora_" in n}
    last = order[-1]
    for name, g in grads.items():
        if name.startswith(f"{last}.to_v."):
            assert g is None or torch.count_nonzero(g) == 0, name
        if ".to_k." in name:
            assert g is not None and torch.count_nonzero(g) > 0, name
    earlier_v = [g for n, g in grads.items() if ".to_v." in n and not n.startswith(last) and g is not None]
    assert any(torch.count_nonzero(g) > 0 for g in earlier_v), "earlier to_v layers get indirect gradient"


def test_token_placement_multi_token_repeated_and_padding(tmp_path):
    tok = write_tokenizer(tmp_path / "tok")
    p = place(tok, "a photo of elon musk and elon musk", "elon musk")
    assert len(p.concept) == 4 and p.concept[0] == 4
    assert p.eos == p.length - 1 and tok.convert_ids_to_tokens(p.ids[p.eos]) == "<|endoftext|>"
    assert set(p.after).isdisjoint(p.concept) and max(p.after) == p.eos
    assert len(p.padding) == 77 - p.length  # SD-1.x pads with EOS: kept apart, never "the concept"
    assert p.positions() == p.concept
    assert p.positions(after=True, padding=True)[-1] == 76


def test_train_is_deterministic_and_leaves_the_base_untouched(pipeline_dirs):
    pipe = load_base(str(pipeline_dirs["sd1"]))
    before = render(pipe)
    a = train_patch(pipe, ["circle"], TrainConfig(**FAST), progress=False)
    assert torch.equal(render(pipe), before)
    assert not (getattr(pipe.pipe.unet, "peft_config", None) or {})
    b = train_patch(load_base(str(pipeline_dirs["sd1"])), ["circle"], TrainConfig(**FAST), progress=False)
    assert a.tensor_hash() == b.tensor_hash()
    c = train_patch(pipe, ["circle"], TrainConfig(**{**FAST, "seed": 1}), progress=False)
    assert c.tensor_hash() != a.tensor_hash()
    assert set(a.modules) == {m for m in a.modules if m.endswith(("attn2.to_k", "attn2.to_v"))}
    assert a.info.method == "resteer" and a.concept_names == ["circle"]
    assert a.info.concepts[0].category == "object" and a.info.config["anchors"] == {"circle": "shape"}


@pytest.mark.parametrize("attack", ["inversion", "kv"])
def test_robust_rounds_attack_between_rounds_and_stay_deterministic(attack, pipeline_dirs, monkeypatch):
    import fmn_patch.methods.robust as train_module

    calls: list[int] = []
    other: list[str] = []
    real_inversion, real_kv = train_module.learn_tokens, train_module.kv_inversion

    def counting(*args, **kwargs):
        calls.append(kwargs.get("config", args[4]).steps if attack == "inversion" else -1)
        other.append("inversion")
        return real_inversion(*args, **kwargs)

    def counting_kv(*args, **kwargs):
        calls.append(kwargs["steps"])
        other.append("kv")
        return real_kv(*args, **kwargs)

    monkeypatch.setattr(train_module, "learn_tokens", counting)
    monkeypatch.setattr(train_module, "kv_inversion", counting_kv)
    config = TrainConfig(**{**FAST, "robust_rounds": 3, "robust_attack_steps": 2, "robust_attack": attack})
    pipe = load_base(str(pipeline_dirs["sd1"]))
    before = render(pipe)
    a = train_patch(pipe, ["circle"], config, progress=False)
    assert calls == [2, 2]  # an inner attack between rounds, with its budget, none after the last
    assert other == [attack, attack]  # the configured attack alone
    assert a.info.extra["cost"]["samples"]["attacks"] > 0
    assert (
        a.info.method == "resteer+robust" and len(a.info.extra["loss_curve"]) == 3 * 2
    )  # 3 rounds x 2 steps
    assert torch.equal(render(pipe), before) and not (getattr(pipe.pipe.unet, "peft_config", None) or {})
    assert len(pipe.pipe.tokenizer) == len(
        load_base(str(pipeline_dirs["sd1"])).pipe.tokenizer
    )  # attack tokens are gone
    b = train_patch(load_base(str(pipeline_dirs["sd1"])), ["circle"], config, progress=False)
    assert a.tensor_hash() == b.tensor_hash()
    with pytest.raises(FmnPatchError, match="--robust and --ti"):
        from fmn_patch.methods.inversion import InversionConfig
        from fmn_patch.methods.resteer import train_patch_with_inversion

        train_patch_with_inversion(pipe, ["circle"], config, InversionConfig(steps=1), progress=False)


def test_resteering_lowers_the_attention_mass(pipeline_dirs):
    pipe = load_base(str(pipeline_dirs["sd1"]))
    config = TrainConfig(
        **{**FAST, "steps": 25, "denoise_weight": 0.0, "preserve_weight": 0.0, "lr": 1e-2, "init": "zero"}
    )  # from zero: the closed-form edit (the default start) has already moved the mass
    patch = train_patch(pipe, ["circle"], config, progress=False)
    curve = patch.info.extra["loss_curve"]
    assert sum(curve[-5:]) / 5 < 0.7 * sum(curve[:5]) / 5


@pytest.mark.parametrize("kind", ["sd2", "sdxl"])
def test_train_serves_sd2_and_sdxl(kind, pipeline_dirs):
    pipe = load_base(str(pipeline_dirs[kind]))
    patch = train_patch(pipe, ["circle", "bob"], TrainConfig(**FAST), progress=False)
    assert patch.modules == sorted(
        pipe.family.adapters.target_shapes()
    )  # every attn2 to_k/to_v: 14 (sd2), 24 (sdxl)
    assert len(patch.modules) == {"sd2": 14, "sdxl": 24}[kind]
    assert patch.concept_names == ["circle", "bob"]
    apply_patches(pipe, [patch])


def test_bad_inputs(sd1, tmp_path):
    with pytest.raises(FmnPatchError, match="give its category"):
        train_patch(sd1, ["zebra"], TrainConfig(**FAST), progress=False)
    with pytest.raises(FmnPatchError, match="lr=-1"):
        TrainConfig(lr=-1)
    with pytest.raises(FmnPatchError, match="no concept"):
        train_patch(sd1, [], progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(FmnPatchError, match="no readable image"):
        train_patch(sd1, ["circle"], TrainConfig(**FAST), images=str(empty), progress=False)
    with pytest.raises(FmnPatchError, match="not a folder"):
        train_patch(sd1, ["circle"], TrainConfig(**FAST), images=str(tmp_path / "nope"), progress=False)


def test_nan_guard_stops_and_writes_nothing(sd1, monkeypatch):
    import fmn_patch.methods.steps as steps  # where the step reads the loss

    # an lr that makes the loss blow up is refused by TrainConfig now (lr <= 1); a loss term gone NaN is what the
    # guard is for
    real = steps.resteer_loss
    monkeypatch.setattr(steps, "resteer_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(FmnPatchError, match="diverged"):
        train_patch(sd1, ["circle"], TrainConfig(**FAST), progress=False)
    assert not (getattr(sd1.pipe.unet, "peft_config", None) or {})
    with pytest.raises(FmnPatchError, match="lr=1e\\+30 must be a finite number > 0 and <= 1"):
        TrainConfig(lr=1e30)


def test_images_folder_reports_bad_files(sd1, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 40), (200, 30 * i, 10)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"nope")
    (folder / "readme.txt").write_text("x")
    patch = train_patch(sd1, ["circle"], TrainConfig(**FAST), images=str(folder), progress=False)
    err = capsys.readouterr().err
    assert "broken.png" in err and "readme.txt" in err and patch.rank == 4


def test_textual_inversion_stage_and_sibling_file(pipeline_dirs, tmp_path, monkeypatch):
    from fmn_patch.methods.inversion import InversionConfig
    from fmn_patch.methods.resteer import train_patch_with_inversion

    pipe = load_base(str(pipeline_dirs["sd1"]))
    converted: list[str] = []
    real_encode = pipe.family.text.encode

    def recording(prompts, *args, **kwargs):  # what the pipeline's encode_prompt really tokenizes
        converted.extend(pipe.pipe.maybe_convert_prompt(list(prompts), pipe.pipe.tokenizer))
        return real_encode(prompts, *args, **kwargs)

    monkeypatch.setattr(pipe.family.text, "encode", recording)
    vocab = len(pipe.pipe.tokenizer)
    table = pipe.pipe.text_encoder.get_input_embeddings().weight.clone()
    patch, learned = train_patch_with_inversion(
        pipe,
        ["circle"],
        TrainConfig(**FAST),
        InversionConfig(steps=3, num_tokens=2, batch_size=2),
        progress=False,
    )
    assert len(pipe.pipe.tokenizer) == vocab and torch.equal(
        pipe.pipe.text_encoder.get_input_embeddings().weight, table
    )
    assert patch.info.method == "resteer+ti" and learned[0].names == ["<fmn-circle>", "<fmn-circle>_1"]
    with_token = [c for c in converted if "<fmn-circle>" in c]
    assert with_token and all(
        c.count("<fmn-circle>") == 2 and "_1_1" not in c for c in with_token
    )  # expanded once
    path = learned[0].save(tmp_path / "forget-circle.ti.safetensors")
    stock = load_base(str(pipeline_dirs["sd1"]))
    stock.pipe.load_textual_inversion(
        str(path), token="<fmn-circle>"
    )  # stock diffusers reads the sibling file
    assert "<fmn-circle>" in stock.pipe.tokenizer.get_vocab()


def test_train_cli_writes_patch_and_refuses_overwrite(capsys, pipeline_dirs, tmp_path):
    import json

    from test_cli import run

    out = tmp_path / "forget-circle.safetensors"
    args = [
        "train",
        "circle",
        "--base",
        str(pipeline_dirs["sd1"]),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--bench",
        "toy",
        "-o",
        str(out),
    ]
    code, stdout, _ = run(capsys, *args, "--json")
    assert code == 0 and json.loads(stdout)["output"] == str(out) and out.exists()
    before = out.read_bytes()
    code, _, err = run(capsys, *args)
    assert code == 2 and "--overwrite" in err and out.read_bytes() == before
    code, _, err = run(
        capsys, "train", "zebra", "--base", str(pipeline_dirs["sd1"]), "-o", str(tmp_path / "z.safetensors")
    )
    assert code == 2 and "--category" in err and not (tmp_path / "z.safetensors").exists()


def test_negative_guidance_per_category():
    from fmn_patch.methods.resteer import ETA_DEFAULT, eta_of

    assert eta_of(TrainConfig(), "style") == 1.0 and eta_of(TrainConfig(), "object") == ETA_DEFAULT == 2.0
    assert eta_of(TrainConfig(), "identity") == 2.0 and eta_of(TrainConfig(eta=0.5), "style") == 0.5
    with pytest.raises(FmnPatchError, match="eta=-1"):
        TrainConfig(eta=-1.0)
    from fmn_patch.methods.resteer import preserve_of

    assert preserve_of(TrainConfig(), "style") == 100.0 and preserve_of(TrainConfig(), "object") == 30.0
    assert preserve_of(TrainConfig(preserve_weight=5.0), "style") == 5.0
    assert preserve_of(TrainConfig(), "style", "identity", "style") == 30.0  # several: the smallest
    assert preserve_of(TrainConfig(preserve_weight=5.0), "style", "object") == 5.0


@pytest.mark.parametrize("name", ["preserve_padding", "after", "train_values", "checkpointing"])
@pytest.mark.parametrize("value", ["no", "False", 0, 1, 2.0, [], "True"])
def test_a_yes_no_setting_takes_true_or_false_only(name, value):
    with pytest.raises(FmnPatchError, match=f"{name}=.* must be True or False"):
        TrainConfig(**{name: value})
    TrainConfig(**{name: False})


def test_preserve_padding_left_to_the_family_is_bos_to_eos_on_a_unet_and_every_slot_on_an_mmdit(
    sd1, mmdit_dirs
):
    from fmn_patch.methods.dataset import preserve_states

    prompts = ["a photo of bob", "circle"]
    torch.testing.assert_close(
        preserve_states(sd1, prompts, padding=None), preserve_states(sd1, prompts, padding=False)
    )
    mmdit = load_base(str(mmdit_dirs["sd3"]))
    auto = preserve_states(mmdit, prompts, padding=None)  # seeded: the same draws
    every = preserve_states(mmdit, prompts, padding=True)
    assert auto.keys() == every.keys() and all(torch.equal(auto[k], every[k]) for k in auto)


def test_preservation_without_padding_reads_each_prompt_from_bos_to_eos(sd1, mmdit_dirs):
    from fmn_patch.methods.dataset import preserve_states

    prompts = ["a photo of bob", "circle", ""]
    rows = preserve_states(sd1, prompts, padding=False)
    full = sd1.family.text.encode(prompts).states  # padded to the max length, as the pipeline encodes them
    lengths = [len(ids) for ids in sd1.family.text.text_states().ids(prompts)]
    assert rows.shape == (sum(lengths), full.shape[-1])
    expected = torch.cat([s[:n] for s, n in zip(full, lengths, strict=True)]).float()
    torch.testing.assert_close(rows, expected, atol=1e-4, rtol=1e-4)  # the same states, padding left out
    mmdit = load_base(str(mmdit_dirs["sd3"]))
    with pytest.raises(FmnPatchError, match="leave preserve_padding True"):
        preserve_states(mmdit, prompts, padding=False)
