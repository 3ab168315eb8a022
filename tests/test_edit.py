"""The closed-form edit on tiny pipelines: true-length text states, alignment, what moves and what stays."""

from __future__ import annotations

import pytest
import torch

from fmn_patch.concepts.bench import Concept, load_bench
from fmn_patch.concepts.prompts import neighbour_prompts, parse_concept, resolve
from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import load_base
from fmn_patch.families.encoding import align
from fmn_patch.format import Patch
from fmn_patch.methods.edit import EditConfig, edit_patch
from fmn_patch.methods.edit import _preserve as preserve_prompts
from fmn_patch.methods.editor import ERASE, ERASE_DEFAULT, Editor

PROMPTS = ["a photo of bob", "a red circle in the style of van gogh", ""]
SMALL = EditConfig(rank=4, vocab_words=20, padding=3)


def test_true_length_states_equal_the_pipelines_own(pipeline_dirs, kind):
    pipe = load_base(str(pipeline_dirs[kind]))
    ref = pipe.pipe.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )[0]
    text = pipe.family.text.text_states()
    assert torch.equal(text.encode(PROMPTS, 77), ref.float())  # padded to the max length: identical
    short = text.encode(PROMPTS, 0)  # true length: the causal mask keeps padding out of the real tokens
    assert short.shape[1] == max(len(i) for i in text.ids(PROMPTS)) < ref.shape[1]
    assert torch.allclose(short, ref[:, : short.shape[1]].float(), atol=1e-5)


def test_align_maps_concept_tokens_onto_anchor_tokens():
    # BOS a [elon musk] in red EOS  ->  BOS a [man] in red EOS
    assert align([0, 1, 7, 8, 2, 3, 9], [0, 1, 5, 2, 3, 9], start=2, n=2) == [
        (2, 2),
        (3, 2),
        (4, 3),
        (5, 4),
        (6, 5),
    ]
    # an empty anchor: the concept's tokens map onto the token now in their place
    assert align([0, 1, 7, 2, 9], [0, 1, 2, 9], start=2, n=1) == [(2, 2), (3, 2), (4, 3)]
    assert align([0, 1, 7, 2, 9], [0, 4, 5, 2, 9], start=2, n=1) is None  # a different prefix: no alignment


def test_concepts_take_category_and_aliases_from_the_bench():
    bench = load_bench("toy")
    circle, bob, other = resolve(["circle", "bob", "hexagon=hex"], bench, "style")
    assert (circle.category, circle.aliases) == ("object", ("disc",))
    assert bob.category in ("identity", "id") and bob.aliases == ("mister bob",)
    assert (other.name, other.category, other.aliases) == ("hexagon", "style", ("hex",))
    assert parse_concept(" Elon Musk = the Tesla CEO, Elon ") == ("Elon Musk", ("the Tesla CEO", "Elon"))
    with pytest.raises(FmnPatchError, match="has no name"):
        parse_concept("=disc")


def test_preserve_set_leaves_out_prompts_with_erased_words(sd1):
    bench = load_bench("toy")
    concepts = resolve(["circle"], bench)
    prompts = list(
        preserve_prompts(sd1.family, concepts, ["shape"], bench, SMALL, extra=["a circle", "a dog"])
    )
    assert "" in prompts and "a dog" in prompts and "a red square" in prompts and "a red shape" in prompts
    assert not any("circle" in p or "disc" in p for p in prompts)


def test_neighbours_are_the_other_concepts_of_an_erased_ones_category():
    bench = load_bench("toy")
    circle, bob = resolve(["circle", "bob"], bench)
    near = neighbour_prompts(bench, [circle])
    assert "a red heart" in near and "a red semicircle" in near
    assert not any({"circle", "disc"} & set(p.split()) for p in near)
    owners = {c.name for c in bench.concepts for n in c.names for p in bench.prompts(c, n) if p in set(near)}
    assert owners == {c.name for c in bench.concepts if c.category == "object"} - {"circle"}
    both = set(neighbour_prompts(bench, [circle, bob]))
    assert set(near) < both and not any("bob" in p.split() for p in both)
    assert neighbour_prompts(None, [circle]) == []


def test_the_neighbour_weight_keeps_an_erased_concepts_neighbour_apart():
    """On the toy, "heart" reads much like "circle" (cosine 0.64 at its position): preserved like any other prompt,
    the edit of circle moves heart's keys and values by a large share of circle's; weighted, by far less."""
    toy = load_base("toy")
    states = toy.family.text.encode(["a red circle", "a red heart"]).states[
        :, 3
    ]  # (2, D) the shape's position

    def share(weight: float) -> float:
        patch = edit_patch(toy, ["circle"], config=EditConfig(neighbour_weight=weight))
        moved = [(states @ patch.delta(n).T).norm(dim=-1) for n in patch.factors]
        return float(sum(m[1] / m[0] for m in moved) / len(moved))  # heart's change over circle's

    plain, weighted = share(1.0), share(10.0)
    assert weighted < 0.5 * plain, (plain, weighted)


def test_each_concept_is_erased_at_its_categorys_weight():
    """No erase weight given: an object's rows at ERASE_DEFAULT, an identity's at ERASE["identity"] (its name reads
    like its neighbours'); the weights are recorded, and one given weight is every concept's."""
    toy = load_base("toy")
    circle = edit_patch(toy, ["circle"])
    assert (
        circle.tensor_hash()
        == edit_patch(toy, ["circle"], config=EditConfig(erase_weight=ERASE_DEFAULT)).tensor_hash()
    )
    both = edit_patch(toy, ["circle", "bob"])
    assert both.info.extra["erase_weights"] == {"circle": ERASE_DEFAULT, "bob": ERASE["identity"]}
    flat = edit_patch(toy, ["circle", "bob"], config=EditConfig(erase_weight=ERASE_DEFAULT))
    assert flat.info.extra["erase_weights"] == {"circle": ERASE_DEFAULT, "bob": ERASE_DEFAULT}
    assert flat.tensor_hash() != both.tensor_hash()
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(FmnPatchError, match="erase_weight"):
            EditConfig(erase_weight=bad)


def _kv(pipe: object, patch: Patch | None, states: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in pipe.family.adapters.targets().items():  # type: ignore[attr-defined]
        w = layer.weight.detach().float()
        if patch is not None:
            w = w + patch.delta(name)
        out[name] = states @ w.T
    return out


def test_edit_moves_the_concept_and_keeps_the_rest(sd1):
    # a small preserve set, so that 32 random dims can serve both: the erased prompt and a preserved one
    config = EditConfig(rank=32, bench="none", vocab_words=0, padding=0, push=0.0, erase_weight=100.0)
    patch = edit_patch(
        sd1, ["circle"], anchor="square", preserve=["a photo of bob"], config=config, category="object"
    )
    assert patch.info.method == "edit" and patch.concept_names == ["circle"]
    assert set(patch.modules) == set(sd1.family.adapters.targets()) and patch.rank == 32
    extra = patch.info.extra
    assert (
        set(extra["residuals"]) == set(patch.modules) and extra["residual"] < 1e-3
    )  # rank 32: the full delta
    assert (
        extra["rows"]["erase"] > 0
        and extra["rows"]["preserve"] > 0
        and extra["anchors"] == {"circle": "square"}
    )
    erased, anchored, kept = sd1.family.text.text_states().encode(
        ["a photo of circle", "a photo of square", "a photo of bob"], 0
    )
    concept_to_eos = slice(4, 6)  # BOS a photo of [circle] EOS
    before, after = _kv(sd1, None, erased[concept_to_eos]), _kv(sd1, patch, erased[concept_to_eos])
    target = _kv(sd1, None, anchored[concept_to_eos])
    kept_before, kept_after = _kv(sd1, None, kept), _kv(sd1, patch, kept)
    for name in patch.modules:
        moved = (after[name] - target[name]).norm() / (before[name] - target[name]).norm()
        assert moved < 0.1, name  # "a photo of circle" now gives (almost) the keys/values of "... square"
        change = (kept_after[name] - kept_before[name]).norm() / kept_before[name].norm()
        erased_change = (after[name] - before[name]).norm() / before[name].norm()
        # a preserved prompt's keys/values barely move (in 32 random dims "bob" and "circle" states correlate;
        # exact preservation of independent directions is checked in test_solver)
        assert change < 0.1 and change < erased_change / 3, name


def test_rank_truncation_is_reported(sd1):
    patch = edit_patch(
        sd1, ["circle", "bob"], config=EditConfig(rank=1, vocab_words=20, padding=3), category="object"
    )
    extra = patch.info.extra
    assert (
        patch.rank == 1 and 0 < extra["residual"] < 1 and all(0 < r < 1 for r in extra["residuals"].values())
    )


def test_edit_is_deterministic_and_saves(sd1, tmp_path):
    first = edit_patch(sd1, ["circle=disc"], config=SMALL, category="object")
    second = edit_patch(sd1, ["circle=disc"], config=SMALL, category="object")
    assert first.tensor_hash() == second.tensor_hash()
    loaded = Patch.load(first.save(tmp_path / "p.safetensors"))
    assert loaded.info.extra["aliases"] == {"circle": ["disc"]} and loaded.info.config["rank"] == 4


def test_streaming_keeps_memory_flat(sd1):
    editor = Editor(sd1, SMALL)
    editor.erase((f"a photo of {w}", w, "a photo of a dog", 10.0) for w in ["circle", "bob", "alice"] * 50)
    assert editor.normal.gram.shape == (editor.dim, editor.dim) and editor.report.prompts == 150
    assert len(editor._anchor_cache) == 1  # the anchor prompt is encoded once


def test_edit_errors_name_the_fix(sd1):
    with pytest.raises(FmnPatchError, match="no concept"):
        edit_patch(sd1, [], config=SMALL)
    with pytest.raises(FmnPatchError, match="contains the concept"):
        edit_patch(sd1, ["circle"], anchor="a red circle", config=SMALL, category="object")
    with pytest.raises(FmnPatchError, match="rank=0"):
        EditConfig(rank=0)
    with pytest.raises(FmnPatchError, match="unknown category"):
        Concept("x", "colour")  # type: ignore[arg-type]


def test_wide_layers_are_factored_without_forming_their_delta(sd1, monkeypatch):
    """The randomised path for wide layers (forced here on the tiny UNet) gives nearly the exact path's deltas, and
    the header says its residuals are estimates."""
    import fmn_patch.methods.editor as edit_module

    config = EditConfig(rank=4)
    exact = edit_patch(sd1, ["circle"], config=config, category="object")
    monkeypatch.setattr(edit_module, "NARROW", 8)  # every tiny layer now counts as wide
    fast = edit_patch(sd1, ["circle"], config=config, category="object")
    assert exact.info.extra["residual_kind"] == "exact" and fast.info.extra["residual_kind"] == "estimate"
    for module, (a, b) in exact.factors.items():
        fa, fb = fast.factors[module]
        d, f = b @ a, fb @ fa
        assert float((d - f).norm()) <= 0.05 * float(d.norm()) + 1e-8, module
    assert abs(fast.info.extra["residual"] - exact.info.extra["residual"]) < 0.05
