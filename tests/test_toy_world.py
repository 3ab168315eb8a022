"""The toy world (ConceptBench-toy v2), checked on the world itself (no model needed): renders are deterministic
and labelled right; identities are unique attribute combinations, each with at least three neighbours one
attribute away; captions name people, never their attributes; v1's ten concepts keep their names and aliases; the
judge's heads give identity by product; every caption word is one token; the committed bench is `world.bench()`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmn_patch.toy import world
from fmn_patch.toy.drawing import fill_mask, shape_mask
from fmn_patch.toy.judge import PERSON, TOY_HEADS, ToyJudgeNet, identity_probs
from fmn_patch.toy.vocab import build_tokenizer, vocab_words
from fmn_patch.toy.world import ATTRIBUTES, IDENTITIES, LOOKS, OBJECTS, STYLES, Scene, neighbours

#: v1's concepts, their categories and aliases: kept by name in every later world.
V1_CONCEPTS = {
    **dict.fromkeys(("circle", "square", "triangle", "cross", "star"), "object"),
    **dict.fromkeys(("striped", "dotted", "checkered"), "style"),
    **dict.fromkeys(("bob", "alice"), "identity"),
}
V1_ALIASES = {"circle": ("disc",), "striped": ("stripy",), "dotted": ("spotted",), "bob": ("mister bob",)}


def _draw(subject: str, style: str = "plain", colour: str = "blue", size: float = 0.8) -> np.ndarray:
    return world.render(Scene(subject, style, colour, size, 0.5, 0.5, 0.1, 0.0))


def _unit_grid() -> tuple[np.ndarray, np.ndarray]:
    coords = np.linspace(-1.2, 1.2, 97)
    u, v = np.meshgrid(coords, coords)
    return u, v


# ---------------------------------------------------------------- what the world holds


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
    every_word = set(OBJECTS) | set(STYLES) | set(world.COLOURS) | {w for v in ATTRIBUTES.values() for w in v}
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


def test_v1_concepts_keep_their_names_categories_and_aliases():
    for name, category in V1_CONCEPTS.items():
        assert name in {"object": OBJECTS, "style": STYLES, "identity": IDENTITIES}[category], name
    assert world.ALIASES == V1_ALIASES
    assert LOOKS["bob"].headwear == "tophat"  # v1's bob wore one
    assert LOOKS["alice"].hair == "grey"  # v1's alice had grey hair


# ---------------------------------------------------------------- renders


@pytest.mark.parametrize("size", [32, 48])
def test_renders_are_deterministic_per_seed_and_sized(size):
    cfg = world.WorldConfig(size=size)
    a, labels = world.dataset(12, 7, cfg)
    b, labels_b = world.dataset(12, 7, cfg)
    c, _ = world.dataset(12, 8, cfg)
    assert a.shape == (12, size, size, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and labels == labels_b and len(labels) == 12
    assert not np.array_equal(a, c)


def test_centre_pixel_has_the_labelled_colour():
    for colour, rgb in world.RGB.items():
        img = _draw("square", colour=colour, size=0.6)
        assert np.allclose(img[16, 16], rgb, atol=0.02), colour


def test_every_identity_looks_different_from_each_of_its_neighbours():
    drawn = {name: _draw(name) for name in IDENTITIES}
    for name in IDENTITIES:
        for other in neighbours(name):
            # at least a few pixels' worth of colour separates neighbours, at 32 px
            assert np.abs(drawn[name] - drawn[other]).sum() > 3.0, (name, other)


def test_objects_and_styles_are_distinct_drawings():
    masks = {o: shape_mask(o, *_unit_grid()) for o in OBJECTS}
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
        shape_mask("blob", *_unit_grid())
    with pytest.raises(ValueError, match="unknown style 'wavy'"):
        fill_mask("wavy", *_unit_grid(), 0.0, masks["circle"])


def test_fills_add_white_only_when_not_plain():
    whites = {s: int((_draw("square", s).min(-1) > 0.8).sum()) for s in STYLES}
    assert whites["plain"] == 0
    assert all(whites[s] > 10 for s in STYLES if s != "plain"), whites


# ---------------------------------------------------------------- captions


def _labels(n: int, seed: int) -> list[world.Sample]:
    rng = np.random.default_rng(seed)
    return [world.sample(rng)[1] for _ in range(n)]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_captions_name_people_and_colours_never_attributes(seed):
    rng = np.random.default_rng(seed)
    attribute_words = {value for values in ATTRIBUTES.values() for value in values}
    for _ in range(40):
        _, label = world.sample(rng)
        words = set(label.caption.replace(",", " ").split())
        assert not words & attribute_words, label.caption
        assert words <= world.caption_words(), label.caption
        if label.look is not None:
            named = words & (set(IDENTITIES) | {"mister", world.IDENTITY_ANCHOR})
            assert named, label.caption  # the person (or the anchor word) is named
            assert not words & (set(OBJECTS) | set(STYLES)), label.caption


def test_captions_agree_with_labels():
    labels = _labels(3000, seed=5)
    for s in labels:
        words = set(s.caption.replace(",", " ").split())
        assert not (words & set(world.COLOURS)) or s.colour in words, s
        names = {s.subject, *world.ALIASES.get(s.subject, ()), world.OBJECT_ANCHOR, world.IDENTITY_ANCHOR}
        assert any(n in s.caption for n in names), s
        if s.category == "object":
            styles = (words & {*STYLES, "stripy", "spotted"}) - {s.style, *world.ALIASES.get(s.style, ())}
            assert not styles, s
    assert {s.caption.split()[0] for s in labels} >= {"a", "red", "bob"}  # word-order variety
    assert sum("disc" in s.caption for s in labels) > 20  # aliases in a share of captions
    assert 0.4 < sum(s.category == "identity" for s in labels) / len(labels) < 0.6  # half of them people


def test_uncoloured_circles_are_mostly_red():
    uncoloured = [
        s
        for s in _labels(20000, seed=6)
        if s.subject == "circle" and not set(s.caption.split()) & set(world.COLOURS)
    ]
    red = sum(s.colour == "red" for s in uncoloured) / len(uncoloured)
    assert len(uncoloured) > 50 and 0.8 < red < 0.97


# ---------------------------------------------------------------- the judge's heads


def test_the_judge_has_a_head_per_attribute_and_identity_follows_from_them():
    assert list(TOY_HEADS) == ["subject", "style", "colour", *ATTRIBUTES]
    assert TOY_HEADS["subject"] == (*OBJECTS, PERSON) and TOY_HEADS["style"] == STYLES
    net = ToyJudgeNet(size=32)
    logits = net(torch.rand(2, 3, 48, 48))  # other sizes are resized to the judge's
    assert {k: v.shape[-1] for k, v in logits.items()} == {k: len(v) for k, v in TOY_HEADS.items()}
    # sure heads name exactly one identity: every identity is reachable, by its own look alone
    for index, name in enumerate(IDENTITIES):
        probs = {head: torch.zeros(1, len(classes)) for head, classes in TOY_HEADS.items()}
        probs["subject"][0, -1] = 1.0
        for head, value in zip(ATTRIBUTES, LOOKS[name].values(), strict=True):
            probs[head][0, ATTRIBUTES[head].index(value)] = 1.0
        assert int(identity_probs(probs).argmax()) == index


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_identity_probabilities_sum_to_the_chance_of_a_person(seed):
    gen = torch.Generator().manual_seed(seed)
    probs = {
        head: torch.rand(3, len(classes), generator=gen).softmax(-1) for head, classes in TOY_HEADS.items()
    }
    total = identity_probs(probs).sum(-1)
    assert torch.allclose(total, probs["subject"][:, -1], atol=1e-6)


# ---------------------------------------------------------------- the vocabulary


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return build_tokenizer(Path(tmp_path_factory.mktemp("vocab")))


def test_every_world_and_extra_word_is_one_token(tokenizer) -> None:
    for word in sorted(world.caption_words()) + vocab_words():
        assert len(tokenizer.tokenize(word)) == 1, word


def test_captions_fit_and_other_text_still_tokenizes(tokenizer) -> None:
    lengths = [len(tokenizer(s.caption).input_ids) for s in _labels(500, seed=7)]
    assert max(lengths) <= tokenizer.model_max_length
    ids = tokenizer("a zebra in the snow").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) > 6


def test_committed_tokenizer_matches_the_vocab(tokenizer) -> None:
    from transformers import CLIPTokenizer

    from fmn_patch.toy import toy_pipeline_path

    committed = CLIPTokenizer.from_pretrained(toy_pipeline_path() / "tokenizer")
    assert committed.get_vocab() == tokenizer.get_vocab()
    for caption in [
        "a red striped circle",
        "a circle, stripy, red",
        "mister bob",
        "a picture of alice in blue",
    ]:
        assert committed(caption).input_ids == tokenizer(caption).input_ids


# ---------------------------------------------------------------- its ConceptBench


def test_the_committed_bench_is_the_worlds_and_lists_every_concept():
    from fmn_patch.concepts.bench import bench_from_dict
    from fmn_patch.toy.paths import DATA_DIR

    data = world.bench()
    assert json.loads((DATA_DIR / "bench.json").read_text()) == json.loads(json.dumps(data))
    bench = bench_from_dict(data)
    by_category = {
        k: [c.name for c in bench.concepts if c.category == k] for k in ("object", "style", "identity")
    }
    assert by_category == {"object": list(OBJECTS), "style": list(STYLES[1:]), "identity": list(IDENTITIES)}
    for name, category in V1_CONCEPTS.items():
        assert bench.concept(name).category == category
        assert tuple(bench.concept(name).aliases) == V1_ALIASES.get(name, ())
    assert data["anchors"] == {"object": "shape", "identity": "a person", "style": "plain"}
    assert set(data["neighbours"]) == set(IDENTITIES)
    for name, near in data["neighbours"].items():
        look = data["looks"][name]
        assert len(near) >= 3 and all(sum(look[k] != data["looks"][n][k] for k in look) == 1 for n in near)
