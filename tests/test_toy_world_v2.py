"""ConceptBench-toy v2's world: its invariants, checked on the world itself (no model needed).

Identities are unique attribute combinations, each with at least three neighbours; captions name people, never
their attributes; v1's ten concepts keep their names and aliases; the judge's heads give identity by product.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmn_patch.toy import world, world_v2
from fmn_patch.toy.judge import PERSON, V2_HEADS, ToyJudgeNet, identity_probs
from fmn_patch.toy.world_v2 import ATTRIBUTES, IDENTITIES, LOOKS, OBJECTS, STYLES, Scene, neighbours


def test_the_world_is_big_enough_for_mass_erasure():
    styles = [s for s in STYLES if s != "plain"]  # plain is the style anchor
    assert len(IDENTITIES) >= 48 and len(OBJECTS) >= 16 and len(styles) >= 6
    assert len(IDENTITIES) + len(OBJECTS) + len(styles) >= 70
    assert len(IDENTITIES) >= 50 + 3  # erasing 50 at once leaves identities to keep


def test_every_identity_is_a_unique_attribute_combination_with_a_unique_single_word_name():
    looks = [look.values() for look in LOOKS.values()]
    assert len(set(looks)) == len(looks) == len(IDENTITIES)
    for name, look in LOOKS.items():
        for head, value in zip(ATTRIBUTES, look.values(), strict=True):
            assert value in ATTRIBUTES[head], (name, head, value)
        assert re.fullmatch(r"[a-z]+", name), name
    every_word = (
        set(OBJECTS) | set(STYLES) | set(world_v2.COLOURS) | {w for v in ATTRIBUTES.values() for w in v}
    )
    assert not every_word & set(IDENTITIES)
    assert len(set(IDENTITIES)) == len(IDENTITIES)


def test_every_identity_has_at_least_three_neighbours_that_differ_in_exactly_one_attribute():
    for name in IDENTITIES:
        found = neighbours(name)
        assert len(found) >= 3, name
        assert name not in found
        for other in found:
            assert LOOKS[name].differences(LOOKS[other]) == 1
            assert name in neighbours(other)  # the relation is symmetric


def test_v1_concepts_keep_their_names_and_aliases():
    assert set(world.OBJECTS) <= set(OBJECTS) and set(world.STYLES) <= set(STYLES)
    assert set(world.IDENTITIES) <= set(IDENTITIES)
    assert world_v2.ALIASES == world.ALIASES
    assert LOOKS["bob"].headwear == "tophat"  # v1's bob wore one


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_captions_name_people_and_colours_never_attributes(seed):
    rng = np.random.default_rng(seed)
    attribute_words = {value for values in ATTRIBUTES.values() for value in values}
    for _ in range(40):
        _, label = world_v2.sample(rng)
        words = set(label.caption.replace(",", " ").split())
        assert not words & attribute_words, label.caption
        assert words <= world_v2.caption_words(), label.caption
        if label.look is not None:
            named = words & (set(IDENTITIES) | {"mister", world_v2.IDENTITY_ANCHOR})
            assert named, label.caption  # the person (or the anchor word) is named
            assert not words & (set(OBJECTS) | set(STYLES)), label.caption


@pytest.mark.parametrize("size", [32, 48])
def test_renders_are_deterministic_and_sized(size):
    cfg = world_v2.WorldConfig(size=size)
    a, labels = world_v2.dataset(12, 7, cfg)
    b, _ = world_v2.dataset(12, 7, cfg)
    assert a.shape == (12, size, size, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and len(labels) == 12


def _draw(subject: str, style: str = "plain", colour: str = "blue") -> np.ndarray:
    return world_v2.render(Scene(subject, style, colour, 0.8, 0.5, 0.5, 0.1, 0.0))


def test_every_identity_looks_different_from_each_of_its_neighbours():
    drawn = {name: _draw(name) for name in IDENTITIES}
    for name in IDENTITIES:
        for other in neighbours(name):
            # at least a few pixels' worth of colour separates neighbours, at 32 px
            assert np.abs(drawn[name] - drawn[other]).sum() > 3.0, (name, other)


def test_objects_and_styles_are_distinct_drawings():
    masks = {o: world_v2._shape_mask(o, *_unit_grid()) for o in OBJECTS}
    for a in OBJECTS:
        assert masks[a].mean() > 0.1, a  # a visible area
        for b in OBJECTS:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.85, (a, b, iou)
    styled = {s: _draw("square", s) for s in STYLES}
    for a in STYLES:
        for b in STYLES:
            if a < b:
                assert np.abs(styled[a] - styled[b]).mean() > 0.02, (a, b)
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        world_v2._shape_mask("blob", *_unit_grid())


def _unit_grid() -> tuple[np.ndarray, np.ndarray]:
    coords = np.linspace(-1.2, 1.2, 97)
    u, v = np.meshgrid(coords, coords)
    return u, v


def test_the_v2_judge_has_a_head_per_attribute_and_identity_follows_from_them():
    assert list(V2_HEADS) == ["subject", "style", "colour", *ATTRIBUTES]
    assert V2_HEADS["subject"] == (*OBJECTS, PERSON)
    net = ToyJudgeNet(heads=V2_HEADS, size=32)
    logits = net(torch.rand(2, 3, 48, 48))  # other sizes are resized to the judge's
    assert {k: v.shape[-1] for k, v in logits.items()} == {k: len(v) for k, v in V2_HEADS.items()}
    # sure heads name exactly one identity: every identity is reachable, by its own look alone
    for index, name in enumerate(IDENTITIES):
        probs = {head: torch.zeros(1, len(classes)) for head, classes in V2_HEADS.items()}
        probs["subject"][0, -1] = 1.0
        for head, value in zip(ATTRIBUTES, LOOKS[name].values(), strict=True):
            probs[head][0, ATTRIBUTES[head].index(value)] = 1.0
        assert int(identity_probs(probs).argmax()) == index


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_identity_probabilities_sum_to_the_chance_of_a_person(seed):
    gen = torch.Generator().manual_seed(seed)
    probs = {
        head: torch.rand(3, len(classes), generator=gen).softmax(-1) for head, classes in V2_HEADS.items()
    }
    total = identity_probs(probs).sum(-1)
    assert torch.allclose(total, probs["subject"][:, -1], atol=1e-6)


def test_every_v2_caption_word_is_one_token_of_its_vocabulary(tmp_path):
    from fmn_patch.toy.vocab import build_tokenizer

    tokenizer = build_tokenizer(tmp_path, world_v2.caption_words())
    for word in sorted(world_v2.caption_words()):
        assert len(tokenizer.tokenize(word)) == 1, word


def test_a_toy_model_trains_on_a_named_world_only():
    from fmn_patch.toy.train import WORLDS, TrainConfig, parse_args

    assert (
        WORLDS["v2"] is world_v2 and TrainConfig().world == "v1"
    )  # the committed toy stays v1's until v2's card
    with pytest.raises(ValueError, match="world 'v3' is not a toy world; choose one of v1, v2"):
        TrainConfig(world="v3")
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--world", "v3"])
    assert exit_.value.code == 2


def test_the_v2_bench_keeps_v1s_concepts_templates_and_anchors_and_lists_every_concept():
    import json

    from fmn_patch.concepts.bench import bench_from_dict
    from fmn_patch.toy.paths import DATA_DIR

    data = world_v2.bench()
    v1 = json.loads((DATA_DIR / "bench.json").read_text())
    if v1["description"].startswith("ConceptBench-toy v2"):  # once v2 is the committed toy, the file is this
        assert v1 == json.loads(json.dumps(data))
    for key in ("judge", "anchors", "paraphrases", "inversion_template", "attributes", "templates"):
        assert data[key] == v1[key], key
    ours = {c["name"]: c for c in data["concepts"]}
    for concept in v1["concepts"]:
        assert ours[concept["name"]] == concept  # same category and aliases
    bench = bench_from_dict(data)
    by_category = {
        k: [c.name for c in bench.concepts if c.category == k] for k in ("object", "style", "identity")
    }
    assert len(by_category["identity"]) >= 48 and len(by_category["object"]) >= 16
    assert len(by_category["style"]) >= 6 and len(bench.concepts) >= 70
    assert set(data["neighbours"]) == set(by_category["identity"])
    for name, near in data["neighbours"].items():
        look = data["looks"][name]
        assert len(near) >= 3 and all(sum(look[k] != data["looks"][n][k] for k in look) == 1 for n in near)
