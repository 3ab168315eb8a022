"""The closed-form solver: recovers a known W, matches the per-layer reference, keeps what it must keep."""

from __future__ import annotations

import pytest
import torch

from fmn_patch.solver import NormalEquations, factorize, layer_delta, ridge_solve


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
