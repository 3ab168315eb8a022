"""The peer baselines in bench/peers (UCE, SPEED): their solvers against direct float64 least squares, SPEED's
null-space and invariant properties, and their patches on the toy model (exact, applied and removed cleanly)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import Base, load_base
from fmn_patch.families.stack import apply_patches, remove_patches
from fmn_patch.format.patch import Patch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # bench/ is no package of the install; last on the path, it shadows nothing

from conftest import F64, lstsq64, randn64  # noqa: E402

from bench.peers import (  # noqa: E402
    MULTI_CONCEPT,
    SpeedConfig,
    UceConfig,
    speed_delta,
    speed_patch,
    speed_projector,
    uce_patch,
    uce_solve,
)
from bench.peers.patching import exact_factors  # noqa: E402
from bench.peers.speed import kmeans  # noqa: E402


# ------------------------------------------------------------------------------------------------ pure solvers
def test_uce_solve_is_the_ridge_least_squares() -> None:
    """W' minimises es sum ||W' c - W t||^2 + ps sum ||W' k - W k||^2 + lamb ||W' - W||^2 (stacked, lstsq)."""
    w, c, t, k = randn64(12, 8, seed=0), randn64(5, 8, seed=1), randn64(5, 8, seed=2), randn64(6, 8, seed=3)
    lamb, es, ps = 0.5, 1.0, 0.3
    a = torch.cat([es**0.5 * c, ps**0.5 * k, lamb**0.5 * torch.eye(8, dtype=F64)])  # (n + k + in, in)
    b = torch.cat([es**0.5 * t @ w.T, ps**0.5 * k @ w.T, lamb**0.5 * w.T])  # (n + k + in, out)
    expected = lstsq64(a, b).T
    assert torch.allclose(uce_solve(w, c, t, k, lamb, es, ps), expected, atol=1e-10)


def _speed_reference(
    w: torch.Tensor,
    c: torch.Tensor,
    anchor: torch.Tensor,
    p: torch.Tensor,
    k2: torch.Tensor,
    retain_scale: float,
) -> torch.Tensor:
    """argmin over D = D P with D K2 = 0 of mean_i ||(W + D) c_i - W a_i||^2 + retain_scale ||D||^2, by lstsq
    over an orthonormal basis E of {x in range(P): K2^T x = 0} (D = Y E^T)."""
    vals, vecs = torch.linalg.eigh(p)
    basis = vecs[:, vals > 0.5]  # (in, m): range of P
    u, s, _ = torch.linalg.svd(basis.T @ k2)  # (m, m), constraints inside the null space
    e = basis @ u[:, int((s > 1e-9 * s.max()).sum()) :]  # (in, m - rank)
    n = c.shape[0]
    a = torch.cat([c @ e / n**0.5, retain_scale**0.5 * torch.eye(e.shape[1], dtype=F64)])
    b = torch.cat([(anchor - c) @ w.T / n**0.5, torch.zeros(e.shape[1], w.shape[0], dtype=F64)])
    return lstsq64(a, b).T @ e.T  # Y E^T (out, in)


@pytest.mark.parametrize("redundant", [False, True], ids=["independent", "redundant-invariant"])
def test_speed_delta_is_the_constrained_least_squares(redundant: bool) -> None:
    """SPEED's closed form is the ridge least squares inside the retain null space with W' K2 = W K2; also when an
    invariant lies in the retain span (its constraint is then redundant and the code's inverse singular)."""
    w, c, anchor = randn64(9, 10, seed=4), randn64(3, 10, seed=5), randn64(3, 10, seed=6)
    retain = randn64(20, 4, seed=7) @ randn64(4, 10, seed=8)  # (20, 10) rows in a 4-dim subspace
    k2 = randn64(10, 3, seed=9)
    if redundant:
        k2[:, 0] = retain[0]
    p = speed_projector(retain, 1e-8)
    tt, at = c.T @ c / 3, anchor.T @ c / 3
    delta = speed_delta(w, tt, at, p, k2, 0.7, 0.0)
    assert torch.allclose(delta, _speed_reference(w, c, anchor, p, k2, 0.7), atol=1e-9)
    assert (delta @ k2).abs().max() < 1e-9  # W' K2 = W K2


def test_speed_projector_spans_the_null_space() -> None:
    retain = randn64(30, 5, seed=10) @ randn64(5, 12, seed=11)
    p = speed_projector(retain, 1e-8)
    assert torch.allclose(p, p.T) and torch.allclose(p @ p, p, atol=1e-10)
    assert round(float(p.trace())) == 7 and (retain @ p).abs().max() < 1e-9
    assert torch.equal(speed_projector(retain[:0], 0.1), torch.eye(12, dtype=F64))  # no row: the whole space


def test_speed_keeps_retained_outputs_exactly_and_uce_does_not() -> None:
    """The null-space property: W' c = W c for retain rows under SPEED; UCE only trades them off."""
    w, c, anchor = randn64(16, 12, seed=12), randn64(2, 12, seed=13), randn64(2, 12, seed=14)
    retain = randn64(6, 12, seed=15)
    p = speed_projector(retain, 1e-8)
    delta = speed_delta(w, c.T @ c / 2, anchor.T @ c / 2, p, randn64(12, 2, seed=16), 1.0, 0.0)
    moved = (retain @ delta.T).norm() / (retain @ w.T).norm()
    assert moved < 1e-10
    assert (c @ delta.T).norm() / (c @ w.T).norm() > 0.1  # and the erased rows do move
    uce = uce_solve(w, c, anchor, retain, 0.5, 1.0, 1.0)
    assert (retain @ (uce - w).T).norm() / (retain @ w.T).norm() > 1e-3


def test_exact_factors_multiply_back_bit_for_bit() -> None:
    for shape in [(5, 3), (3, 5), (4, 4)]:
        d = randn64(*shape, seed=17).float()
        a, b = exact_factors(d)
        assert a.shape[0] == min(shape) and torch.equal(b @ a, d)


def test_kmeans_finds_separated_clusters() -> None:
    x = torch.cat([randn64(10, 3, seed=18) * 0.01 + shift for shift in (0.0, 5.0, -5.0)])
    centres = kmeans(x, 3, torch.Generator().manual_seed(0))
    assert sorted(round(float(v)) for v in centres.mean(dim=1)) == [-5, 0, 5]


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: UceConfig(lamb=0), "lamb"),
        (lambda: UceConfig(erase_scale=float("nan")), "erase_scale"),
        (lambda: UceConfig(preserve_scale=-1.0), "preserve_scale"),
        (lambda: UceConfig(params="Q"), "params"),  # type: ignore[arg-type]
        (lambda: UceConfig(templates=("painting by",)), "template"),
        (lambda: SpeedConfig(threshold=0), "threshold"),
        (lambda: SpeedConfig(retain_scale=float("inf")), "retain_scale"),
        (lambda: SpeedConfig(lamb=-0.1), "lamb"),
        (lambda: SpeedConfig(aug_num=-1), "aug_num"),
        (lambda: SpeedConfig(aug_num=True), "aug_num"),  # type: ignore[arg-type]
        (lambda: SpeedConfig(filter="no"), "filter"),  # type: ignore[arg-type]
        (lambda: SpeedConfig(seed=-3), "seed"),
    ],
)
def test_configs_refuse_absurd_values_in_one_line(make: Callable[[], object], field: str) -> None:
    with pytest.raises(FmnPatchError) as err:
        make()
    assert field in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ on the toy
@pytest.fixture(scope="module")
def toy() -> Base:
    return load_base("toy")


def _last(toy: Base, prompt: str) -> torch.Tensor:
    """The text state of the prompt's last real token, (1, dim)."""
    text = toy.family.text.text_states()
    n = len(text.ids([prompt])[0])
    return text.encode([prompt], 0)[0, n - 2 : n - 1]


@torch.no_grad()
def _out(toy: Base, module: str, x: torch.Tensor) -> torch.Tensor:
    """The module's output as the denoiser computes it, with whatever patches are applied."""
    return toy.family.adapters.denoiser.get_submodule(module)(x)


def _moved(toy: Base, module: str, prompt: str) -> float:
    """How far the applied patch moves a module's output at the prompt's last token, relative to the base's."""
    x = _last(toy, prompt)
    base = x @ toy.family.adapters.targets()[module].weight.detach().T
    return float((_out(toy, module, x) - base).norm() / base.norm())


@pytest.mark.parametrize(
    ("make", "modules", "kept_at"),
    [
        (lambda toy: uce_patch(toy, ["circle"], "shape", ["square", "triangle"]), ("to_k", "to_v"), 0.15),
        (
            lambda toy: speed_patch(toy, ["circle"], "shape", ["square", "triangle"], MULTI_CONCEPT),
            ("to_v",),
            1e-5,
        ),
    ],
    ids=["uce", "speed"],
)
def test_patches_apply_and_remove_on_the_toy(
    toy: Base, make: Callable[[Base], Patch], modules: tuple[str, ...], kept_at: float
) -> None:
    patch = make(toy)
    shapes = toy.family.adapters.target_shapes()
    assert (
        patch.info.method in ("uce", "speed")
        and patch.info.config
        and patch.info.extra["seconds"]["total"] > 0
    )
    assert {m.rsplit(".", 1)[-1] for m in patch.modules} == set(modules)
    assert patch.ranks == {m: min(shapes[m]) for m in patch.modules}  # full rank: the edit itself
    module = next(m for m in patch.modules if m.endswith("to_v"))
    before = _out(toy, module, _last(toy, "circle"))
    names = apply_patches(toy, [patch])
    try:
        assert _moved(toy, module, "circle") > 0.5
        assert max(_moved(toy, module, p) for p in ("square", "triangle")) < kept_at
        x = _last(toy, "a red circle")
        exact = x @ (toy.family.adapters.targets()[module].weight.detach() + patch.delta(module)).T
        assert torch.allclose(_out(toy, module, x), exact, atol=1e-5)
    finally:
        remove_patches(toy, names)
    assert torch.equal(_out(toy, module, _last(toy, "circle")), before)


def test_speed_keeps_the_invariants_and_filters_the_prior_on_the_toy(toy: Base) -> None:
    """IEC: the empty prompt's SOT state keeps its values; IPF (on by default) drops the less influenced of two
    retain names, which then moves like any other prompt, while the kept one stays put."""
    patch = speed_patch(toy, ["circle"], "shape", ["square", "triangle"])
    text = toy.family.text.text_states()
    sot = text.encode([""], 0)[0, :1]
    for module in patch.modules:
        w = toy.family.adapters.targets()[module].weight.detach()
        assert (sot @ patch.delta(module).T).norm() < 1e-5 * (sot @ w.T).norm()
        moved = [
            float((_last(toy, p) @ patch.delta(module).T).norm() / (_last(toy, p) @ w.T).norm())
            for p in ("square", "triangle")
        ]
        assert min(moved) < 1e-5 < max(moved)


def test_peer_arguments_are_checked(toy: Base) -> None:
    with pytest.raises(FmnPatchError, match="list of concept names"):
        uce_patch(toy, "circle", "shape")
    with pytest.raises(FmnPatchError, match="2 anchors for 1 concepts"):
        speed_patch(toy, ["circle"], ["shape", "thing"])
    with pytest.raises(FmnPatchError, match="names an erased concept"):
        speed_patch(toy, ["circle"], "shape", ["a red circle"])


def test_mixed_ranks_apply_exactly(toy: Base) -> None:
    """On SD the exact factors have per-module ranks (320, 640, 768); the stack applies such a patch exactly."""
    targets = toy.family.adapters.targets()
    factors = {}
    for i, name in enumerate(targets):
        rank = 64 if i % 2 else 16
        factors[name] = (
            randn64(rank, 64, seed=i).float() * 0.01,
            randn64(64, rank, seed=99 + i).float() * 0.01,
        )
    x = _last(toy, "a red circle")
    names = apply_patches(toy, [Patch(factors)])
    try:
        for name, (a, b) in factors.items():
            want = x @ (targets[name].weight.detach() + b @ a).T
            assert torch.allclose(_out(toy, name, x), want, atol=1e-5)
    finally:
        remove_patches(toy, names)
