"""The committed toy judge: safetensors weights, >= 99% accuracy per head on freshly rendered images."""

from __future__ import annotations

import torch

from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.judges import class_index, concept_probs
from fmn_patch.toy import toy_judge_path
from fmn_patch.toy.judge import TOY_HEADS, ToyJudge
from fmn_patch.toy.train_judge import targets, to_unit
from fmn_patch.toy.world import dataset


def test_judge_is_accurate_on_fresh_renders() -> None:
    images, labels = dataset(600, seed=424242)
    judge = ToyJudge.load()
    probs = judge.probs(to_unit(images))
    y = targets(labels)
    for head in TOY_HEADS:
        acc = (probs[head].argmax(-1) == y[head]).float().mean().item()
        assert acc >= 0.99, (head, acc)


def test_judge_weights_are_safetensors() -> None:
    assert toy_judge_path().suffix == ".safetensors"
    with open(toy_judge_path(), "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        assert f.read(1) == b"{" and header_len > 0


def test_concept_probs_follow_the_category_head() -> None:
    bench = load_bench("toy")
    images, _ = dataset(8, seed=1)
    judge = ToyJudge.load()
    x = to_unit(images)
    for name in ["circle", "striped", "bob"]:
        p = concept_probs(judge, x, bench.concept(name))
        concept = bench.concept(name)
        head = judge.category_probs(x, concept.category)[:, class_index(judge, concept)]
        assert p.shape == (8,) and torch.equal(p, head)
    assert torch.allclose(judge.category_probs(x, "identity"), judge.category_probs(x, "object"))
