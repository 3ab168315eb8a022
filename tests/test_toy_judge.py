"""The committed toy judge: safetensors weights, >= 99% accuracy per head on freshly rendered images."""

from __future__ import annotations

import pytest
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


def test_a_v2_judge_file_names_its_world_and_judges_identities_from_the_look(tmp_path):
    from safetensors.torch import load_file, save_file

    from fmn_patch.errors import FmnPatchError
    from fmn_patch.toy import world_v2
    from fmn_patch.toy.judge import V2_HEADS, ToyJudgeNet, identity_probs

    torch.manual_seed(0)
    path = tmp_path / "judge.safetensors"
    ToyJudge(ToyJudgeNet(heads=V2_HEADS), world="v2").save(path)
    judge = ToyJudge.load(path)
    assert judge.world == "v2" and judge.heads == V2_HEADS
    images = torch.rand(5, 3, 32, 32)
    assert judge.classes("identity") == world_v2.IDENTITIES
    people = judge.category_probs(images, "identity")
    assert people.shape == (5, len(world_v2.IDENTITIES))
    torch.testing.assert_close(people, identity_probs(judge.probs(images)))
    # over every identity the probabilities sum to P(person): the four attribute heads factorise
    person = judge.probs(images)["subject"][:, V2_HEADS["subject"].index("person")]
    torch.testing.assert_close(people.sum(1), person)
    assert judge.classes("object")[-1] == "person" and judge.classes("style") == world_v2.STYLES
    # a header naming a world this version does not know is refused in one line
    save_file(load_file(str(path)), str(tmp_path / "v9.safetensors"), metadata={"world": "v9"})
    with pytest.raises(FmnPatchError, match="names the world 'v9'"):
        ToyJudge.load(tmp_path / "v9.safetensors")


def test_the_committed_judge_is_v1_until_v2_replaces_it():
    judge = ToyJudge.load()
    assert judge.world == "v1" and judge.classes("identity") == (
        "circle",
        "square",
        "triangle",
        "cross",
        "star",
        "bob",
        "alice",
    )


def test_the_judge_trainer_refuses_an_unknown_world_with_exit_2(capsys):
    from fmn_patch.toy.train_judge import parse_args

    with pytest.raises(SystemExit) as stop:
        parse_args(["--world", "v3"])
    assert stop.value.code == 2 and "world 'v3' is not a toy world" in capsys.readouterr().err
