"""``rank="auto"``: the smallest rank per layer within a residual target, for edits and merges."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmn_patch.format.lowrank import (
    factorize,
    factorize_products,
    factorize_products_within,
    rank_for,
    spectra_of_products,
    spectrum,
)


def _relative(s: list[float], rank: int, outside: float) -> float:
    """The brute-force relative residual of the truncation to ``rank``."""
    total = math.fsum(x * x for x in s) + outside
    return math.sqrt((math.fsum(x * x for x in s[rank:]) + outside) / total)


spectra = st.lists(st.floats(0, 1e6, allow_nan=False), min_size=0, max_size=40).map(
    lambda xs: sorted(xs, reverse=True)
)


@settings(max_examples=300, deadline=None)
@given(spectra, st.floats(1e-6, 1 - 1e-6), st.one_of(st.just(0.0), st.floats(0, 1e6)))
def test_rank_for_is_the_smallest_rank_within_the_target(s, target, outside):
    r = rank_for(s, target, outside)
    assert 0 <= r <= len(s)
    if math.fsum(x * x for x in s) + outside == 0:
        assert r == 0
        return
    slack = 1e-9
    if _relative(s, r, outside) <= target * (1 + slack):  # r is within the target ...
        assert r == 0 or _relative(s, r - 1, outside) > target * (1 - slack)  # ... and one less is not
    else:  # no rank reaches it (the energy outside the spectrum is too large): all of it
        assert r == len(s) and _relative(s, len(s), outside) > target * (1 - slack)


def test_rank_for_takes_a_tensor_and_counts_the_energy_outside():
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])
    # relative residuals at ranks 0 .. 4: 1, 0.497, 0.243, 0.108, 0
    assert [rank_for(s, t) for t in (0.999, 0.5, 0.3, 0.2, 0.1)] == [1, 1, 2, 3, 4]
    assert rank_for(s, 0.3, outside=1.0) == 3  # what lies outside the spectrum counts in the residual
    assert rank_for(s, 0.2, outside=1.0) == 4  # out of reach: all of it
    assert rank_for([], 0.5) == 0 and rank_for([0.0, 0.0], 0.5) == 0


def _low_rank_products(seed: int = 0):
    """Three layers of different widths whose deltas W P have decaying spectra."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(96, 96, generator=g, dtype=torch.float64))[0]
    p = u @ torch.diag(0.8 ** torch.arange(96, dtype=torch.float64)) @ u.T  # (in, in), spectrum 0.8^j
    ws = [torch.randn(out, 96, generator=g, dtype=torch.float64) for out in (40, 96, 160)]
    return ws, p


def test_spectra_give_the_fixed_rank_factors():
    ws, p = _low_rank_products()
    for sp, fixed in zip(spectra_of_products(ws, p, 12), factorize_products(ws, p, 12), strict=True):
        a, b, res, total = sp.factors(12)
        assert torch.equal(a, fixed[0]) and torch.equal(b, fixed[1]) and (res, total) == fixed[2:]
    d = ws[1] @ p
    full = spectrum(d, 8, exact=True)
    assert full.outside == 0 and full.s.numel() == 96
    assert math.isclose(full.residual(5), factorize(d, 5, exact=True)[2], rel_tol=1e-9)


def test_products_within_meet_the_target_at_the_smallest_rank():
    ws, p = _low_rank_products()
    for target in (0.3, 0.1, 0.03):
        for w, (a, _, res, total) in zip(ws, factorize_products_within(ws, p, target, cap=40), strict=True):
            d = w @ p
            r = a.shape[0]
            exact = factorize(d, r, exact=True)
            measured = math.sqrt(exact[2] / exact[3])
            assert measured <= target * 1.05 and math.sqrt(res / total) <= target  # estimate and truth
            below = factorize(d, r - 1, exact=True) if r > 1 else None
            assert below is None or math.sqrt(below[2] / below[3]) > target * 0.95  # one less is not enough


@pytest.mark.parametrize("exact", [True, False])
def test_spectrum_of_a_formed_delta_reports_what_it_misses(exact):
    ws, p = _low_rank_products()
    d = (ws[2] @ p).float()
    sp = spectrum(d, 10, exact=exact)
    assert math.isclose(sp.total, float(d.double().square().sum()), rel_tol=1e-5)
    a, b, res, _ = sp.factors(10)
    assert a.dtype == torch.float32
    assert math.isclose(res, float((d.double() - b.double() @ a.double()).square().sum()), rel_tol=1e-3)
