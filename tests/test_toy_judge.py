"""The committed toy judge: safetensors weights, >= 99% accuracy per head on freshly rendered images; a judge file
names its world, identities are judged from the look, and a judge of another world is refused in one line."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fmn_patch.concepts.bench import load_bench
from fmn_patch.errors import FmnPatchError, UnknownNameError
from fmn_patch.evaluation.judges import class_index, concept_probs
from fmn_patch.toy import toy_judge_path, world
from fmn_patch.toy.judge import TOY_HEADS, ToyJudge, ToyJudgeNet, identity_probs
from fmn_patch.toy.train_judge import targets, to_unit
from fmn_patch.toy.world import dataset


def test_judge_is_accurate_on_fresh_renders() -> None:
    images, labels = dataset(600, seed=424242)
    judge = ToyJudge.load()
    probs = judge.probs(to_unit(images))
    y = targets(labels)
    for head in TOY_HEADS:
        keep = y[head] != -100  # a person's attributes count on people only
        acc = (probs[head].argmax(-1)[keep] == y[head][keep]).float().mean().item()
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
    torch.testing.assert_close(judge.category_probs(x, "identity"), identity_probs(judge.probs(x)))


def test_a_judge_file_names_its_world_and_judges_identities_from_the_look(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "judge.safetensors"
    ToyJudge(ToyJudgeNet()).save(path)
    with safe_open(str(path), "pt") as f:
        assert (f.metadata() or {})["world"] == world.NAME == "v2"
    judge = ToyJudge.load(path)
    assert judge.world == "v2" and judge.heads == TOY_HEADS
    images = torch.rand(5, 3, 32, 32)
    assert judge.classes("identity") == world.IDENTITIES
    people = judge.category_probs(images, "identity")
    assert people.shape == (5, len(world.IDENTITIES))
    torch.testing.assert_close(people, identity_probs(judge.probs(images)))
    # over every identity the probabilities sum to P(person): the four attribute heads factorise
    person = judge.probs(images)["subject"][:, TOY_HEADS["subject"].index("person")]
    torch.testing.assert_close(people.sum(1), person)
    assert judge.classes("object")[-1] == "person" and judge.classes("style") == world.STYLES


@pytest.mark.parametrize("header", [{}, {"world": "v1"}, {"world": "v9"}], ids=["no world", "v1", "v9"])
def test_a_judge_of_another_world_is_refused_in_one_line(tmp_path, header):
    path = tmp_path / "judge.safetensors"
    ToyJudge(ToyJudgeNet()).save(path)
    save_file(load_file(str(path)), str(tmp_path / "other.safetensors"), metadata={"format": "pt", **header})
    with pytest.raises(FmnPatchError) as refused:
        ToyJudge.load(tmp_path / "other.safetensors")
    message = str(refused.value)
    assert f"judges the world {header.get('world', 'v1')}, not this version's v2" in message
    assert message.endswith("rebuild it with `make toy-model`") and "\n" not in message


def test_the_committed_judge_is_this_worlds():
    judge = ToyJudge.load()
    assert judge.world == world.NAME and judge.classes("identity") == world.IDENTITIES


def test_an_unknown_category_names_the_ones_there_are():
    judge = ToyJudge(ToyJudgeNet())
    with pytest.raises(UnknownNameError, match="use one of object, style, identity, subject"):
        judge.classes("animal")
