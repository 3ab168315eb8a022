"""The toy world's renderer and tokenizer: determinism, label correctness, one token per world word."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fmn_patch.toy import world
from fmn_patch.toy.vocab import build_tokenizer, vocab_words


def scene(subject: str, style: str = "plain", colour: str = "red") -> world.Scene:
    return world.Scene(subject, style, colour, size=0.6, cx=0.5, cy=0.5, background=0.1, phase=0.0)


def test_dataset_is_deterministic_per_seed() -> None:
    a, la = world.dataset(40, seed=3)
    b, lb = world.dataset(40, seed=3)
    c, _ = world.dataset(40, seed=4)
    assert np.array_equal(a, b) and la == lb
    assert not np.array_equal(a, c)
    assert a.shape == (40, 32, 32, 3) and a.dtype == np.uint8


def test_centre_pixel_has_the_labelled_colour() -> None:
    for colour, rgb in world.RGB.items():
        img = world.render(scene("square", colour=colour))
        assert np.allclose(img[16, 16], rgb, atol=0.02), colour


def test_shapes_differ_where_their_outlines_differ() -> None:
    corner = (16 + 7, 16 + 7)  # inside the square's corner, outside the circle
    assert np.allclose(world.render(scene("square"))[corner], world.RGB["red"], atol=0.02)
    assert np.allclose(world.render(scene("circle"))[corner], 0.1, atol=0.02)
    images = {s: world.render(scene(s)) for s in world.SUBJECTS}
    for a in world.SUBJECTS:
        for b in world.SUBJECTS:
            if a < b:
                assert np.abs(images[a] - images[b]).max() > 0.5, (a, b)


def test_fills_add_white_only_when_not_plain() -> None:
    whites = {}
    for style in world.STYLES:
        img = world.render(scene("square", style=style, colour="blue"))
        whites[style] = int((img.min(-1) > 0.8).sum())
    assert whites["plain"] == 0
    assert all(whites[s] > 10 for s in world.STYLES if s != "plain")


def test_identities_are_told_apart_by_shape_not_colour() -> None:
    bob, alice = world.render(scene("bob", colour="green")), world.render(scene("alice", colour="green"))
    assert (np.abs(bob - alice).max(-1) > 0.3).sum() > 50


def labels(n: int, seed: int) -> list[world.Sample]:
    rng = np.random.default_rng(seed)
    return [world.sample(rng)[1] for _ in range(n)]


def test_captions_agree_with_labels() -> None:
    labels_ = labels(3000, seed=5)
    for s in labels_:
        words = set(s.caption.replace(",", " ").split())
        assert not (words & set(world.COLOURS)) or s.colour in words, s
        names = {s.subject, *world.ALIASES.get(s.subject, ()), world.OBJECT_ANCHOR, world.IDENTITY_ANCHOR}
        assert any(n in s.caption for n in names), s
        if s.subject in world.OBJECTS:
            styles = (words & {*world.STYLES, "stripy", "spotted"}) - {
                s.style,
                *world.ALIASES.get(s.style, ()),
            }
            assert not styles, s
    orders = {s.caption.split()[0] for s in labels_}
    assert {"a", "red", "bob"} <= orders  # word-order variety
    assert sum("disc" in s.caption for s in labels_) > 30  # aliases in a share of captions


def test_uncoloured_circles_are_mostly_red() -> None:
    uncoloured = [
        s
        for s in labels(6000, seed=6)
        if s.subject == "circle" and not set(s.caption.split()) & set(world.COLOURS)
    ]
    red = sum(s.colour == "red" for s in uncoloured) / len(uncoloured)
    assert len(uncoloured) > 50 and 0.8 < red < 0.97


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return build_tokenizer(Path(tmp_path_factory.mktemp("vocab")))


def test_every_world_and_extra_word_is_one_token(tokenizer) -> None:
    for word in sorted(world.caption_words()) + vocab_words():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_captions_fit_and_other_text_still_tokenizes(tokenizer) -> None:
    _, labels = world.dataset(500, seed=7)
    lengths = [len(tokenizer(s.caption).input_ids) for s in labels]
    assert max(lengths) <= tokenizer.model_max_length
    ids = tokenizer("a zebra in the snow").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) > 6


def test_committed_tokenizer_matches_the_vocab(tokenizer) -> None:
    from transformers import CLIPTokenizer

    from fmn_patch.toy import toy_pipeline_path

    committed = CLIPTokenizer.from_pretrained(toy_pipeline_path() / "tokenizer")
    for caption in [
        "a red striped circle",
        "a circle, stripy, red",
        "mister bob",
        "a picture of alice in blue",
    ]:
        assert committed(caption).input_ids == tokenizer(caption).input_ids
