"""The closed-form solver: recovers a known W, matches the per-layer reference, keeps what it must keep."""

from __future__ import annotations

import pytest
import torch

from fmn_patch.format.lowrank import factorize, factorize_products
from fmn_patch.methods.solver import NormalEquations, layer_delta, ridge_solve


def _data(seed: int = 0, out: int = 12, dim: int = 16, n: int = 6, k: int = 40):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, dim, generator=g)
    erase = torch.randn(n, dim, generator=g)
    target = torch.randn(n, dim, generator=g)  # target embeddings: W' c_e should equal W t_e
    keep = torch.randn(k, dim, generator=g)
    return w, erase, target, keep


def test_ridge_solve_recovers_a_known_w():
    g = torch.Generator().manual_seed(1)
    w, w_true = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    c = torch.randn(50, 10, generator=g)  # more rows than dims: the system pins W' down
    solved = ridge_solve(w.double(), c.double(), c.double() @ w_true.double().T, torch.zeros(0, 10), lam=0.0)
    assert torch.allclose(solved, w_true.double(), atol=1e-8)


def test_shared_solve_equals_the_per_layer_reference():
    w, erase, target, keep = _data()
    normal = NormalEquations(w.shape[1])
    normal.add_erase(erase, target, weight=3.0)
    normal.add_keep(keep[:25], weight=0.5)
    normal.add_keep(keep[25:], weight=0.5)  # streamed in pieces: same sums
    edited = w.double() + w.double() @ normal.solve(lam=0.1)
    target_kv = target.double() @ w.double().T  # (n, out)
    reference = ridge_solve(w.double(), erase, target_kv, keep, 0.1, erase_weight=3.0, keep_weight=0.5)
    assert torch.allclose(edited, reference, atol=1e-9)
    assert (normal.erase_rows, normal.keep_rows) == (6, 40)


def test_no_erase_rows_give_a_zero_delta():
    w, _, _, keep = _data()
    normal = NormalEquations(w.shape[1])
    normal.add_keep(keep)
    assert torch.count_nonzero(layer_delta(w, normal.solve(lam=0.1))) == 0
    assert (
        torch.count_nonzero(NormalEquations(16).solve(lam=0.0)) == 0
    )  # nothing at all: still zero, no error


def test_erased_rows_hit_their_targets_and_preserved_rows_stay():
    w, erase, target, keep = _data(n=4, k=200)
    normal = NormalEquations(w.shape[1])
    normal.add_erase(erase, target, weight=100.0)
    normal.add_keep(keep)
    new = w + layer_delta(w, normal.solve(lam=0.01))
    hit = (erase @ new.T - target @ w.T).norm() / (target @ w.T - erase @ w.T).norm()
    assert hit < 0.2  # the erase rows moved most of the way to their targets
    # preserved rows orthogonal to the erase rows stay (almost) exactly where they were
    q, _ = torch.linalg.qr(erase.T.double(), mode="complete")  # (dim, dim); columns 4.. span the complement
    kept = (torch.randn(30, 12, dtype=torch.float64) @ q[:, 4:].T).float()
    normal = NormalEquations(w.shape[1])
    normal.add_erase(erase, target)
    normal.add_keep(kept)
    new = w + layer_delta(w, normal.solve(lam=1e-6))
    assert ((kept @ new.T - kept @ w.T).norm() / (kept @ w.T).norm()) < 1e-4


def test_factorize_rank_and_residual_bookkeeping():
    g = torch.Generator().manual_seed(2)
    u, v = (
        torch.linalg.qr(torch.randn(20, 3, generator=g))[0],
        torch.linalg.qr(torch.randn(30, 3, generator=g))[0],
    )
    s = torch.tensor([3.0, 2.0, 1.0])
    delta = u @ torch.diag(s) @ v.T  # (20, 30), rank 3
    a, b, residual, total = factorize(delta, 3)
    assert a.shape == (3, 30) and b.shape == (20, 3)
    assert (
        torch.allclose(b @ a, delta, atol=1e-5) and residual < 1e-8 and total == pytest.approx(14.0, rel=1e-5)
    )
    a, b, residual, total = factorize(delta, 2)
    assert residual == pytest.approx(1.0, rel=1e-4)  # the dropped singular value, squared
    assert (delta - b @ a).square().sum().item() == pytest.approx(residual, rel=1e-3)
    a, b, residual, _ = factorize(
        delta, 25
    )  # more than min(out, in): padded with zeros to the requested rank
    assert a.shape == (25, 30) and b.shape == (20, 25) and residual < 1e-8
    big = torch.randn(200, 10, generator=g) @ torch.randn(10, 150, generator=g)
    fast = factorize(big, 10, exact=False)
    assert torch.allclose(fast[1] @ fast[0], big, atol=1e-2) and fast[2] / fast[3] < 1e-8


def test_solver_is_deterministic():
    w, erase, target, keep = _data()

    def once() -> torch.Tensor:
        normal = NormalEquations(w.shape[1])
        normal.add_erase(erase, target)
        normal.add_keep(keep)
        return factorize(layer_delta(w, normal.solve(0.1)), 4)[0]

    assert torch.equal(once(), once())


def _product(seed: int, out: int, dim: int, decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """w (out, dim) and p (dim, dim) float64 with singular values of p decaying as decay^j."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, dim, generator=g, dtype=torch.float64) / dim**0.5
    u, v = (torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64)).Q for _ in range(2))
    return w, u * decay ** torch.arange(dim, dtype=torch.float64) @ v.T


def test_implicit_factorization_matches_the_explicit_one():
    w, p = _product(3, 96, 160, decay=0.8)
    d = w @ p
    a, b, residual, total = factorize(d, 8, exact=True)
    for power_iters, tol in ((1, 2e-3), (3, 1e-5)):  # measured 5e-4 and 2e-7
        a2, b2, residual2, total2 = factorize_products(
            [w], p, 8, power_iters=power_iters, exact_residual=True
        )[0]
        assert a2.shape == (8, 160) and b2.shape == (96, 8) and a2.dtype == torch.float64
        assert (b2 @ a2 - b @ a).norm() / d.norm() < tol  # the same rank-8 product
        assert residual <= residual2 < residual * (1 + tol) and total2 == pytest.approx(total, rel=1e-12)
    # float32 in: float32 factors, the same product up to float32 rounding
    a3, b3, _, _ = factorize_products([w.float()], p.float(), 8, power_iters=3)[0]
    assert a3.dtype == torch.float32 and (b3.double() @ a3.double() - b @ a).norm() / d.norm() < 1e-4


def test_estimated_residual_is_close_to_the_exact_one():
    # 24 layers sharing p, as in a UNet, with the residual spread over many directions: each estimate within 10%
    # (16 probes; measured rms 2.5%), their sum within 2% (probes are independent between layers; measured 0.05%)
    p = _product(4, 1, 300, decay=0.995)[1]
    ws = [_product(5 + i, 200, 300, decay=0.995)[0] for i in range(24)]
    est, exact = factorize_products(ws, p, 8), factorize_products(ws, p, 8, exact_residual=True)
    for (a, b, r, t), (a2, b2, r2, t2) in zip(est, exact, strict=True):
        assert torch.equal(a, a2) and torch.equal(b, b2)  # the same factors: only the bookkeeping differs
        assert r == pytest.approx(r2, rel=0.1) and t == pytest.approx(t2, rel=0.1) and r < t
    assert sum(x[2] for x in est) == pytest.approx(sum(x[2] for x in exact), rel=0.02)
    # a rank-2 delta plus a 1e-4 rest: the estimate finds the tiny residual too
    w, p = _product(6, 120, 160, decay=0.0)
    p = p + 0.5 * _product(7, 1, 160, decay=0.0)[1] + 1e-4 * _product(8, 1, 160, decay=1.0)[1]
    (_, _, r, t), (_, _, r2, t2) = (factorize_products([w], p, 2, exact_residual=e)[0] for e in (False, True))
    assert 1e-7 < r2 / t2 < 1e-5 and r == pytest.approx(r2, rel=0.1) and t == pytest.approx(t2, rel=1e-6)


def test_implicit_factorization_is_deterministic_and_pads_the_rank():
    w, p = _product(8, 40, 64, decay=0.9)
    first, second = (factorize_products([w, w[:20]], p, 6, seed=1) for _ in range(2))
    assert all(
        torch.equal(x, y)
        for f, s in zip(first, second, strict=True)
        for x, y in zip(f[:2], s[:2], strict=True)
    )
    assert [f[2:] for f in first] == [s[2:] for s in second]
    other = factorize_products([w], p, 6, seed=2)[0]
    assert not torch.equal(other[0], first[0][0])  # another seed: other sketches
    a, b, residual, total = factorize_products([w[:5]], p, 12)[0]  # rank 12 > 5 outputs: zero-padded
    assert a.shape == (12, 64) and b.shape == (5, 12) and torch.count_nonzero(a[5:]) == 0
    assert torch.allclose(b @ a, w[:5] @ p, atol=1e-12) and residual < 1e-20 * total
    zero = factorize_products([w], torch.zeros(64, 64, dtype=torch.float64), 4)[0]  # nothing erased
    assert torch.count_nonzero(zero[1] @ zero[0]) == 0 and zero[2:] == (0.0, 0.0)
    assert factorize_products([], p, 4) == []


def test_tensor_hash_takes_rank_one_factors_with_odd_strides():
    from fmn_patch.format import tensor_hash

    column = torch.randn(5, 3).T.contiguous().T[:, :1]  # (5, 1), "contiguous" with a last stride of 5
    assert column.is_contiguous() and column.stride()[-1] != 1
    assert tensor_hash({"b": column}) == tensor_hash({"b": column.clone().reshape(5, 1)})
