"""The MACE peer (bench/peers/mace.py): its two closed forms against float64 least squares, its token alignment,
timestep weights and attention loss, the toy's subject masks, and whole runs on the toy model (exact patch,
preservation, seeded bit-identity, refusals)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fmn_patch.concepts.bench import load_bench
from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import Base, load_base
from fmn_patch.families.stack import apply_patches, remove_patches
from fmn_patch.format.patch import Patch
from fmn_patch.toy import world

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # bench/ is no package of the install; last on the path, it shadows nothing

from conftest import F64, lstsq64, randn64  # noqa: E402

from bench.peers.mace import (  # noqa: E402
    TOY,
    MaceConfig,
    References,
    attention_loss,
    cfr_map,
    concept_positions,
    for_concepts,
    fuse,
    importance_weights,
    mace_patch,
    matching_positions,
)
from bench.peers.mace_toy import subject_mask, toy_captions, toy_references, toy_templates  # noqa: E402


# ------------------------------------------------------------------------------------------------ pure parts
@pytest.mark.parametrize("lamb", [0.0, 0.5])
def test_cfr_is_the_least_squares_with_scaled_preservation(lamb: float) -> None:
    """W Q minimises sum ||W' c - W t||^2 + s sum ||W' k - W k||^2 + lamb ||W' - W||^2 (stacked rows, lstsq)."""
    w, c, t, k = randn64(12, 8, seed=0), randn64(5, 8, seed=1), randn64(5, 8, seed=2), randn64(6, 8, seed=3)
    s = 0.3
    q = cfr_map(c.T @ c, t.T @ c, s * k.T @ k, lamb)
    a = torch.cat([c, s**0.5 * k, lamb**0.5 * torch.eye(8, dtype=F64)])  # (rows, in)
    b = torch.cat([t @ w.T, s**0.5 * k @ w.T, lamb**0.5 * w.T])  # (rows, out)
    assert torch.allclose(w @ q, lstsq64(a, b).T, atol=1e-10)


def test_fusion_is_the_least_squares_over_every_lora() -> None:
    """W* minimises sum_i ||W* x - W_i x||^2 over concept i's rows + f ||W* k - W0 k||^2 + lamb ||W* - W'||^2."""
    w0, w_cfr = randn64(10, 6, seed=0), randn64(10, 6, seed=1)
    loras = [(randn64(1, 6, seed=2 + i), randn64(10, 1, seed=5 + i)) for i in range(3)]
    xs = [randn64(4, 6, seed=9 + i) for i in range(3)]  # each concept: 4 rows, fewer than in = 6
    k, f, lamb = randn64(3, 6, seed=20), 0.2, 0.1
    got = fuse(w0, w_cfr, loras, [x.T @ x for x in xs], f * k.T @ k, lamb)
    a = torch.cat([*xs, f**0.5 * k, lamb**0.5 * torch.eye(6, dtype=F64)])
    erased = [x @ (w_cfr + bb @ aa).T for x, (aa, bb) in zip(xs, loras, strict=True)]
    b = torch.cat([*erased, f**0.5 * k @ w0.T, lamb**0.5 * w_cfr.T])
    assert torch.allclose(got, lstsq64(a, b).T, atol=1e-10)


def test_fusion_of_one_lora_is_that_lora_fused() -> None:
    w0, w_cfr, a, b, x = (
        randn64(10, 6, seed=0),
        randn64(10, 6, seed=1),
        randn64(1, 6, seed=2),
        randn64(10, 1, seed=3),
        randn64(9, 6, seed=4),
    )
    got = fuse(w0, w_cfr, [(a, b)], [x.T @ x], torch.zeros(6, 6, dtype=F64), 0.0)
    assert torch.allclose(got, w_cfr + b @ a, atol=1e-10)


def test_a_singular_closed_form_is_refused_in_one_line() -> None:
    c = randn64(2, 6, seed=0)  # two rows span 2 of 6 dimensions; no preservation, no ridge
    with pytest.raises(FmnPatchError, match="singular") as err:
        cfr_map(c.T @ c, c.T @ c, torch.zeros(6, 6, dtype=F64), 0.0)
    assert "\n" not in str(err.value)


def test_matching_positions_skip_the_concept_and_align_the_rest_from_the_end() -> None:
    old = [0, 5, 6, 7, 9]  # BOS, name (2 tokens), "in", EOS
    new = [0, 8, 7, 9]  # BOS, mapping (1 token), "in", EOS
    a, b = matching_positions(old, new, 10)
    assert a[:3] == [0, 3, 4] and b[:3] == [0, 2, 3]  # BOS, then the common suffix; positions 1-2 / 1 skipped
    assert len(a) == len(b) and a[-1] == 9 and b[-1] == 8  # padding paired by the offset from the end
    assert all(x - y == 1 for x, y in zip(a[1:], b[1:], strict=True))
    same = [0, 5, 9]
    assert matching_positions(same, same, 6) == ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5])


def test_importance_weights_favour_t_between_200_and_400() -> None:
    p = importance_weights(1000)
    assert float(p.sum()) == pytest.approx(1.0)
    assert 290 <= int(p.argmax()) <= 310 and float(p[200:400].sum()) > 0.75 and float(p[:100].sum()) < 0.01


def test_concept_positions_mark_the_name_and_every_eos() -> None:
    ids = [99, 4, 5, 6, 100, 100, 100]
    assert concept_positions(ids, [5, 6], 100).tolist() == [False, False, True, True, True, True, True]
    assert concept_positions(ids, [5, 6], None).tolist() == [False, False, True, True, False, False, False]


def test_attention_loss_reads_the_masked_pixels_at_the_concept_positions() -> None:
    probs = torch.rand(1, 2, 16, 5, generator=torch.Generator().manual_seed(0))  # (1, heads, 4x4, tokens)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., :4, :] = True  # the top half at 8x8 -> the top 2 rows at 4x4
    positions = torch.tensor([False, True, False, False, True])
    want = probs[0, :, :8][..., positions].norm()
    assert torch.allclose(attention_loss([probs], mask, positions), want)
    assert torch.allclose(
        attention_loss([probs, probs], None, positions), 2 * probs[0][..., positions].norm()
    )


def test_configs_refuse_bad_values_and_follow_the_celebrity_configs() -> None:
    with pytest.raises(FmnPatchError, match="rank") as err:
        MaceConfig(rank=0)
    assert "\n" not in str(err.value)
    with pytest.raises(FmnPatchError, match="use_pooler"):
        MaceConfig(use_pooler=1)  # type: ignore[arg-type]
    assert [for_concepts(n).preserve_weight for n in (1, 4, 5, 10, 50, 100)] == [8e3, 8e3, 5e4, 8e4, 8e4, 2e5]


# ------------------------------------------------------------------------------------------------ toy world
@pytest.mark.parametrize("subject", ["bob", "star", world.IDENTITIES[7]])
def test_the_mask_covers_the_subject_and_nothing_else(subject: str) -> None:
    scene = world.Scene(subject, "plain", "red", 0.6, 0.4, 0.6, 0.1, 0.0)
    mask = subject_mask(scene)
    image = world.render(scene)
    assert 0.05 < mask.mean() < 0.5
    painted = np.abs(image - 0.1).max(axis=-1) > 0.01  # (H, W): any of the subject in the pixel
    assert painted[mask].all()  # the mask holds only the subject's pixels ...
    grown = np.pad(mask, 1)
    grown = np.max([grown[i : i + 32, j : j + 32] for i in range(3) for j in range(3)], axis=0)
    assert not (painted & ~grown).any()  # ... and leaves out at most the partly covered rim around it
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() / 32 - 0.4) < 0.1 and abs(ys.mean() / 32 - 0.6) < 0.12


def test_references_are_seeded_images_with_masks_but_styles_have_none() -> None:
    refs = toy_references("bob", "identity", count=3, seed=1)
    assert (
        refs.images.shape == (3, 3, 32, 32) and refs.masks is not None and refs.masks.shape == (3, 1, 32, 32)
    )
    assert float(refs.images.min()) >= -1 and float(refs.images.max()) <= 1 and bool(refs.masks.any())
    assert torch.equal(refs.images, toy_references("bob", "identity", count=3, seed=1).images)
    assert toy_references("striped", "style", count=2).masks is None
    for other in ("v1", "v3"):
        with pytest.raises(
            FmnPatchError, match=f"world='{other}': MACE's references are drawn from this version"
        ):
            toy_references("bob", "identity", other)


# ------------------------------------------------------------------------------------------------ on the toy
QUICK = dataclasses.replace(TOY, steps=4)


@pytest.fixture(scope="module")
def toy() -> Base:
    return load_base("toy")


def _run(toy: Base, names: list[str], config: MaceConfig = QUICK) -> Patch:
    bench = load_bench("toy")
    refs = {n: toy_references(n, "identity", count=2, seed=i) for i, n in enumerate(names)}
    preserve = [c.name for c in bench.concepts if c.name not in names]
    templates = toy_templates(bench, "identity")
    return mace_patch(toy, names, "a person", refs, preserve, toy_captions(count=200), templates, config)


def _moved(toy: Base, patch: Patch, prompt: str) -> float:
    """How far the patch moves the to_v outputs of every position of the padded prompt, relative to the base's."""
    text = toy.family.text.text_states()
    x = text.encode([prompt], text.max_length)[0]  # (L, dim)
    ratios = []
    for module in patch.modules:
        w = toy.family.adapters.targets()[module].weight.detach()
        ratios.append(float((x @ patch.delta(module).T).norm() / (x @ w.T).norm()))
    return max(ratios)


@pytest.fixture(scope="module")
def bob(toy: Base) -> Patch:
    return _run(toy, ["bob"])


def test_the_patch_is_exact_on_every_key_and_value_and_applies(toy: Base, bob: Patch) -> None:
    shapes = toy.family.adapters.target_shapes()
    assert set(bob.modules) == set(shapes) and bob.ranks == {m: min(shapes[m]) for m in bob.modules}
    assert (
        bob.info.method == "mace" and bob.info.config["steps"] == 4 and bob.info.extra["seconds"]["total"] > 0
    )
    module = next(iter(bob.modules))
    x = toy.family.text.text_states().encode(["bob in red"], 0)[0]
    before = toy.family.adapters.denoiser.get_submodule(module)(x).detach()
    names = apply_patches(toy, [bob])
    try:
        want = x @ (toy.family.adapters.targets()[module].weight.detach() + bob.delta(module)).T
        assert torch.allclose(toy.family.adapters.denoiser.get_submodule(module)(x), want, atol=1e-5)
    finally:
        remove_patches(toy, names)
    assert torch.equal(toy.family.adapters.denoiser.get_submodule(module)(x).detach(), before)


def test_preservation_holds_its_inputs_while_the_erased_one_moves(toy: Base, bob: Patch) -> None:
    """The preserve texts (bare names, every padded position) move less the more they weigh; at a weight that
    dominates they stay put, and bob still moves, if little (0.1% at 1e8) when 95 other names hold the space
    around him."""
    kept = ("alice", "circle", "striped")
    free = _run(toy, ["bob"], dataclasses.replace(QUICK, preserve_weight=0.0))
    held = _run(toy, ["bob"], dataclasses.replace(QUICK, preserve_weight=1e8))
    assert all(_moved(toy, held, p) < 0.02 < _moved(toy, bob, p) < _moved(toy, free, p) for p in kept)
    # wherever preservation has weight, bob moves more than twice as far as any kept name, even where it rules
    for patch in (bob, held):
        assert _moved(toy, patch, "bob in red") > 2 * max(_moved(toy, patch, p) for p in kept)
    assert min(_moved(toy, patch, "bob in red") for patch in (free, bob)) > 0.15


def test_seeded_runs_are_bit_identical(toy: Base, bob: Patch) -> None:
    again = _run(toy, ["bob"])
    assert all(torch.equal(bob.delta(m), again.delta(m)) for m in bob.modules)
    other = _run(toy, ["bob"], dataclasses.replace(QUICK, seed=7))
    assert not all(torch.equal(bob.delta(m), other.delta(m)) for m in bob.modules)


def test_bad_input_is_refused_in_one_line(toy: Base) -> None:
    refs = {"bob": References(torch.zeros(1, 3, 32, 32))}
    cases = [
        (lambda: mace_patch(toy, "bob", "a person", refs), "list of concept names"),
        (lambda: mace_patch(toy, ["alice"], "a person", refs), "no reference images"),
        (lambda: mace_patch(toy, ["bob"], "a person", refs, templates=["a photo"]), "must hold"),
        (lambda: mace_patch(toy, ["bob"], "a person", refs, templates="{concept}"), "list of texts"),
        (
            lambda: mace_patch(toy, ["bob"], "a person", refs, templates={"alice": ["{concept}"]}),
            "list of texts",
        ),
    ]
    for call, message in cases:
        with pytest.raises(FmnPatchError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
