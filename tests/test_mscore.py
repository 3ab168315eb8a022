"""ConceptBench loading and M-Score: definitions, output names, and that the metric can fail."""

from __future__ import annotations

import pytest
import torch

from fmn_patch.concepts.bench import Concept, load_bench
from fmn_patch.errors import FmnPatchError
from fmn_patch.evaluation.grid import image_grid
from fmn_patch.evaluation.mscore import ConceptScore, SamplerConfig, acc_kept, evaluate, generate
from fmn_patch.toy import load_toy_pipeline
from fmn_patch.toy.judge import ToyJudge


def test_benches_load_with_categories_aliases_and_templates() -> None:
    toy = load_bench("toy")
    assert {c.category for c in toy.concepts} == {"object", "style", "identity"}
    assert toy.concept("disc").name == "circle"
    assert len(toy.prompts(toy.concept("circle"))) == 8
    assert toy.prompts(toy.concept("bob"), "mister bob")[0] == "mister bob in red"
    real = load_bench("real")
    assert {"tench", "parachute", "Van Gogh", "Elon Musk"} <= set(real.names)
    assert "a photo of the Tesla CEO" in real.prompts(real.concept("Elon Musk"), "the Tesla CEO")


def test_bench_errors_name_the_fix() -> None:
    # user mistakes are FmnPatchErrors that name the fix (the CLI prints them as one line)
    with pytest.raises(FmnPatchError, match="choose one of circle"):
        load_bench("toy").concept("zebra")
    with pytest.raises(FmnPatchError, match="toy"):
        load_bench("nope")
    with pytest.raises(FmnPatchError, match="category"):
        Concept("x", "colour")  # type: ignore[arg-type]


def test_acc_kept_and_to_dict_names() -> None:
    scores = {
        "a": ConceptScore("a", "object", 0.9, 1.0, 0.8, 0.75),
        "b": ConceptScore("b", "style", 0.5, 0.5),
        "c": ConceptScore("c", "identity", 0.1, 0.0),
    }
    assert acc_kept(scores, ["c"]) == pytest.approx(0.75)
    assert acc_kept(scores, ["a", "b", "c"]) is None
    with pytest.raises(FmnPatchError, match="scored concepts"):
        acc_kept(scores, ["zebra"])
    assert set(scores["a"].to_dict()) == {"category", "m_score", "acc", "alias_m_score", "alias_acc"}
    assert set(scores["b"].to_dict()) == {"category", "m_score", "acc"}


def test_image_grid_has_one_cell_per_concept_and_model() -> None:
    images = torch.rand(3, 3, 32, 32)
    one = image_grid({"base": images}, ["a", "b", "c"], cell=64)
    two = image_grid({"base": images, "patched": images}, ["a", "b", "c"], cell=64)
    fewer = image_grid({"base": images[:2]}, ["a", "b"], cell=64)
    assert two.height == one.height and two.width - one.width >= 64  # one more column of 64 px cells
    assert one.width == fewer.width and one.height - fewer.height >= 64  # one more row
    with pytest.raises(FmnPatchError, match="one per row"):
        image_grid({"base": images}, ["a", "b"])


FAST = SamplerConfig(steps=10, guidance=5.0, seeds=(0, 1))
CONCEPTS = ["circle", "striped", "bob"]


@pytest.fixture(scope="module")
def pipe():
    return load_toy_pipeline()


def test_generate_is_deterministic_and_independent_of_batching(pipe) -> None:
    a = generate(pipe, ["a red circle", "bob"], FAST, progress=False)
    b = generate(pipe, ["a red circle", "bob"], SamplerConfig(10, 5.0, (0, 1), batch_size=1), progress=False)
    assert a.shape == (4, 3, 32, 32)
    assert torch.allclose(a, b, atol=1e-4)


def test_base_model_scores_high(pipe) -> None:
    score = evaluate(
        pipe, load_bench("toy"), ToyJudge.load(), FAST, concepts=CONCEPTS, erased=["bob"], progress=False
    )
    for name in CONCEPTS:
        c = score.concepts[name]
        assert c.m_score > 0.75 and c.acc >= 0.8, c
        assert c.alias_acc is not None and c.alias_acc >= 0.6, c
    assert score.acc_kept == pytest.approx((score.concepts["circle"].acc + score.concepts["striped"].acc) / 2)
    assert set(score.to_dict()) == {"erased", "concepts", "acc_kept"}


def test_broken_model_scores_low(pipe) -> None:
    """Zeroing every cross-attention key and value projection cuts the text off: the metric must see it.

    (Zeroing only to_k is not enough: uniform attention still averages the concept's values into the image.)
    A text-blind model still scores what it draws unconditionally (here mostly circles), hence the mean.
    """
    broken = load_toy_pipeline()
    with torch.no_grad():
        for name, module in broken.unet.named_modules():
            if name.endswith(("attn2.to_k", "attn2.to_v")):
                module.weight.zero_()
    score = evaluate(broken, load_bench("toy"), ToyJudge.load(), FAST, concepts=CONCEPTS, progress=False)
    assert sum(c.m_score for c in score.concepts.values()) / len(CONCEPTS) < 0.45
