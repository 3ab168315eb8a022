"""Learned tokens on the MMDiT families: a token lives in every text encoder (SD3: both CLIPs and T5; Flux: CLIP
and T5), so textual inversion, Concept Inversion and the prompt search serve them; robust training is refused there."""

from __future__ import annotations

import pytest
import torch

from fmn_patch.attacks.config import SearchConfig
from fmn_patch.attacks.search import search_prompt
from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import load_base, peek_family
from fmn_patch.methods.inversion import InversionConfig, learn_tokens
from fmn_patch.methods.resteer import TrainConfig, train_patch


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path_factory.getbasetemp() / "refcache"))


def _tokenizers(base) -> dict[str, int]:
    names = ("tokenizer", "tokenizer_2", "tokenizer_3")
    return {n: len(getattr(base.pipe, n)) for n in names if getattr(base.pipe, n, None) is not None}


def test_a_learned_token_reaches_every_text_encoder(mkind, mmdit_dirs):
    base = load_base(str(mmdit_dirs[mkind]))
    family = base.family
    widths = [e.get_input_embeddings().weight.shape[1] for e in family.text.text_encoders()]
    assert len(widths) == (3 if mkind == "sd3" else 2)
    table = family.text.token_table()
    assert table.shape == (len(base.pipe.tokenizer), sum(widths))
    with family.text.added_tokens(
        ["<t>"], table[list(family.text.token_ids("cat"))].mean(0, keepdim=True)
    ) as learned:
        cond = family.text.encode_with_grad(["a photo of <t>"])
        (cond.states.square().sum() + cond.added["pooled"].square().sum()).backward()
        grad = learned.grad
    assert grad is not None
    start = 0
    for width in widths:  # every encoder's columns get a gradient: the token is read by each of them
        assert float(grad[0, start : start + width].abs().sum()) > 0
        start += width


def test_inversion_learns_in_every_encoder_and_restores_the_pipeline(mkind, mmdit_dirs):
    base = load_base(str(mmdit_dirs[mkind]))
    family = base.family
    latents = family.images.generate(["a photo of a cat"], [0, 1], steps=2, guidance=3.0, output="latent")
    tables = [e.get_input_embeddings().weight.detach().clone() for e in family.text.text_encoders()]
    sizes = _tokenizers(base)
    config = InversionConfig(num_tokens=2, steps=6, batch_size=2, lr=5e-2)
    learned = learn_tokens(base, latents, "<fmn-cat>", "cat", config, progress=False)
    assert learned.embeddings.shape == (2, family.text.token_table().shape[1])
    init = family.text.token_table()[list(family.text.token_ids("cat"))].mean(0)
    assert not torch.allclose(learned.embeddings[0], init)
    after = [e.get_input_embeddings().weight for e in family.text.text_encoders()]
    assert all(torch.equal(a, b) for a, b in zip(tables, after, strict=True)) and _tokenizers(base) == sizes
    again = learn_tokens(
        load_base(str(mmdit_dirs[mkind])), latents, "<fmn-cat>", "cat", config, progress=False
    )
    assert torch.equal(learned.embeddings, again.embeddings)
    words = (
        learned.token if family.text.expands_tokens else learned.words
    )  # Flux's pipeline expands <t> itself
    with family.text.added_tokens(learned.names, learned.embeddings):
        image = family.images.generate([f"a photo of {words}"], [0], steps=2, guidance=3.0)
    assert image.shape == (1, 3, 32, 32)
    with (
        pytest.raises(FmnPatchError, match="do not fit this base"),
        family.text.added_tokens(["<u>"], torch.zeros(1, 7)),
    ):
        pass


def test_prompt_search_serves_mmdit(mkind, mmdit_dirs):
    base = load_base(str(mmdit_dirs[mkind]))
    latents = base.family.images.generate(
        ["a photo of a cat"], [0, 1], steps=2, guidance=3.0, output="latent"
    )
    found = search_prompt(base, latents, SearchConfig(seconds=3, length=2, images=2, max_candidates=40))
    assert len(found.prompt.split()) == 2 and found.loss <= found.start_loss


def test_robust_training_is_refused_on_mmdit_with_the_reason(mkind, mmdit_dirs, capsys, tmp_path):
    """Adversarial rounds were measured to make MMDiT patches easier to invert (bench/mmdit_robust.py): refused
    before any work, one line at the CLI, nothing written; the same base still trains without --robust."""
    from test_cli import run

    folder = str(mmdit_dirs[mkind])
    base = load_base(folder)
    sizes = _tokenizers(base)
    with pytest.raises(FmnPatchError, match=r"--robust is not offered for (sd3|flux) models: .*mmdit_robust"):
        train_patch(base, ["Elon Musk"], TrainConfig(robust_rounds=2, steps=2, batch_size=2), progress=False)
    assert _tokenizers(base) == sizes
    out = tmp_path / "robust.safetensors"
    capsys.readouterr()  # the loading bars of the library call above
    code, stdout, err = run(capsys, "train", "Elon Musk", "--base", folder, "--robust", "3", "-o", str(out))
    assert (
        code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    )  # refused before loading the base
    assert err.startswith("fmnpatch: error: --robust is not offered") and "train without --robust" in err
    assert peek_family(folder) is type(base.family) and peek_family("toy") is None  # the index names a UNet
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # about 6 min on 2 loaded cores: every attack, twice, on the tiny Flux
def test_attack_harness_serves_mmdit(mmdit_dirs):
    from fmn_patch.attacks import AttackConfig, InversionAttackConfig, run_attacks
    from fmn_patch.concepts.bench import load_bench
    from fmn_patch.evaluation.mscore import SamplerConfig
    from fmn_patch.toy.judge import ToyJudge
    from fmn_patch.toy.paths import toy_judge_path

    if not toy_judge_path().exists():
        pytest.skip("toy judge not built (make toy-model)")
    from conftest import random_patch

    base = load_base(str(mmdit_dirs["flux"]))
    before = base.family.identity.target_hash()
    config = AttackConfig(
        attacks=("paraphrase", "inversion", "search"),
        sampler=SamplerConfig(steps=2, seeds=(0,)),
        inversion=InversionAttackConfig(steps=2, images=4, batch_size=2),
        search=SearchConfig(max_candidates=8, batch_size=4, images=2),
        image_steps=2,
        grid_images=2,
    )
    judge, bench = ToyJudge.load(), load_bench("toy")
    patch = random_patch(base, concept="circle")
    first = run_attacks(base, [patch], "circle", judge, bench, config)
    again = run_attacks(base, [patch], "circle", judge, bench, config)
    assert first.models == ["base", "patched"]
    assert {r.attack for r in first.results} == {"direct", "paraphrase", "inversion", "search"}
    assert [r.acc for r in first.results] == [r.acc for r in again.results]
    assert base.family.identity.target_hash() == before and not getattr(
        base.pipe.transformer, "peft_config", None
    )
