"""Dense deltas to LoRA factors: truncated SVDs, exact or randomised, with their residuals.

``factorize`` takes a formed delta D (out, in). ``factorize_products`` factors D = W P for many W sharing one P
without forming D: a randomised truncated SVD (Halko, Martinsson and Tropp 2011, "Finding structure with
randomness", algorithms 4.4 and 5.1) that only multiplies by W, P and their transposes (forming the deltas is
out * in^2 per layer: 20 of the 23 s of an SDXL edit). ||D||^2, and with it the residual, is then estimated with
Gaussian probes (Hutchinson 1989): the exact ||W P||^2 = <W^T W, P P^T> costs out * in^2 per layer as well.

A rank per layer: ``spectrum`` and ``spectra_of_products`` keep a layer's leading singular triplets up to a cap and
the energy they miss; ``rank_for`` picks the smallest rank whose residual is within a target, and the ``*_within``
functions factor at that rank, so the choice costs one factorisation at the cap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import torch

#: How a factorisation's residual was obtained: measured on the formed delta, or estimated with random probes.
ResidualKind = Literal["exact", "estimate"]
#: Range-finder columns beyond the rank, subspace (power) iterations, Gaussian probes of the residual.
OVERSAMPLE, POWER_ITERS, PROBES = 8, 1, 16
#: Layers with min(out, in) up to this are factored by an exact SVD of the formed delta (the toy model's: 32, 64).
NARROW = 256

Factors = tuple[torch.Tensor, torch.Tensor, float, float]  # A (r, in), B (out, r), ||D - B A||^2, ||D||^2
#: The largest rank ``rank="auto"`` gives a layer of an edit (its randomised factorisation keeps AUTO_CAP + OVERSAMPLE
#: directions per layer): the largest power of two below the rank at which a LoRA of SD-1.5's narrowest projection
#: (320 x 768) outgrows its dense delta, out * in / (out + in); at SD-1.5 size the factorisation at the cap costs
#: about a second beside the encoding's minutes (BENCHMARKS.md, "Residual against rank").
AUTO_CAP: Final = 128
#: ``rank="auto"``'s default, each layer's ||D - B A|| <= MAX_RESIDUAL ||D||: a margin below the worst-layer residual
#: at which the toy's many-concept edit stops erasing, since the SD-1.5-size curves fall without a knee to pick
#: (BENCHMARKS.md, "Residual against rank").
MAX_RESIDUAL: Final = 0.2


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Exact truncated SVD of a delta (out, in) into A (r, in), B (out, r), and the relative Frobenius residual.

    Computed in float64 (merges check exactness at full rank); the factors come back in float32.
    """
    a, b, residual, total = factorize(delta.double(), rank, exact=True)
    relative = (residual / total) ** 0.5 if total > 0 else 0.0
    return a.float().contiguous(), b.float().contiguous(), relative


def factorize(delta: torch.Tensor, rank: int, exact: bool | None = None) -> Factors:
    """Truncated SVD of a delta (out, in) into LoRA factors A (r, in), B (out, r) (B = U sqrt S, A = sqrt S V^T).

    Returns A, B, the squared Frobenius norm of the residual ``delta - B A`` and of ``delta`` (so that per-layer
    and total relative residuals can both be formed). ``exact=False`` uses a randomised SVD (Halko et al. 2011,
    3 power iterations; 30x faster on a 1280 x 768 layer), ``None`` picks it for layers wider than ``NARROW``.
    float64 input stays float64. The residual is measured directly, ||D - B A||^2, since ||D||^2 - sum s_r^2
    cancels badly in float32.
    """
    d = delta if delta.dtype == torch.float64 else delta.float()
    if exact is None:
        exact = min(d.shape) <= NARROW
    if exact or min(d.shape) <= rank + 8:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)  # (out, k), (k,), (k, in)
    else:
        u, s, v = torch.svd_lowrank(d, q=rank + 8, niter=3)  # (out, q), (q,), (in, q)
        vh = v.T
    a, b = _lora(u, s, vh, rank)
    return a, b, *_measured(d, a, b)


def factorize_products(
    ws: Sequence[torch.Tensor],
    p: torch.Tensor,
    rank: int,
    power_iters: int = POWER_ITERS,
    oversample: int = OVERSAMPLE,
    probes: int = PROBES,
    exact_residual: bool = False,
    seed: int = 0,
) -> list[Factors]:
    """``factorize(w @ p, rank)`` for every w (out, in) and one shared p (in, in), never forming w @ p.

    The factors of ``spectra_of_products`` at ``rank``: their residual ||D - B A||^2 = sum_{j>r} s_j^2 +
    ||(I - Q Q^T) D||^2 and the total ||D||^2 = sum_j s_j^2 + ||(I - Q Q^T) D||^2 are sums of non-negative terms
    (nothing cancels), the last one estimated. ``exact_residual`` measures both on the formed D instead
    (out * in^2 per layer); the factors are the same either way. float64 in, float64 out.
    """
    spectra = spectra_of_products(ws, p, rank, power_iters, oversample, probes, seed)
    if not exact_residual:
        return [sp.factors(rank) for sp in spectra]
    out = []
    for w, sp in zip(ws, spectra, strict=True):
        a, b, _, _ = sp.factors(rank)
        out.append((a, b, *_measured(w.to(sp.dtype) @ p.to(sp.dtype), a, b)))
    return out


def factorize_products_within(
    ws: Sequence[torch.Tensor], p: torch.Tensor, max_residual: float, cap: int = AUTO_CAP, seed: int = 0
) -> list[Factors]:
    """``factorize_products`` at a rank per layer: the smallest (1 .. cap) whose estimated relative residual is at
    most ``max_residual``, from one randomised factorisation at ``cap``."""
    spectra = spectra_of_products(ws, p, cap, seed=seed)
    return [sp.factors(min(cap, sp.rank_for(max_residual))) for sp in spectra]


@dataclass(frozen=True)
class Spectrum:
    """A layer's delta D (out, in) to rank q: D ~ u diag(s) vh, plus ||D||^2 outside the span of u.

    ``s`` is descending; ``outside`` is 0 for a full SVD, estimated with Gaussian probes for a randomised one. The
    truncation to rank r leaves ||D - B A||^2 = sum_{j>r} s_j^2 + outside.
    """

    u: torch.Tensor  # (out, q), float64
    s: torch.Tensor  # (q,), float64, descending
    vh: torch.Tensor  # (q, in), float64
    outside: float  # ||(I - u u^T) D||_F^2
    dtype: torch.dtype  # of the factors it gives

    @property
    def total(self) -> float:
        """||D||_F^2."""
        return float(self.s.square().sum()) + self.outside

    def residual(self, rank: int) -> float:
        """||D - B A||_F^2 of the truncation to ``rank``."""
        return float(self.s[rank:].square().sum()) + self.outside

    def rank_for(self, max_residual: float) -> int:
        """The smallest rank from 1 to q whose relative residual is at most ``max_residual`` (q if none)."""
        return max(1, rank_for(self.s, max_residual, self.outside))

    def factors(self, rank: int) -> Factors:
        """A (rank, in), B (out, rank) of the truncation (zero-padded past q), its residual and ||D||^2."""
        a, b = (x.to(self.dtype) for x in _lora(self.u, self.s, self.vh, rank))
        return a, b, self.residual(rank), self.total


def rank_for(spectrum: Sequence[float] | torch.Tensor, max_residual: float, outside: float = 0.0) -> int:
    """The smallest r in 0 .. len(spectrum) with sqrt((sum_{j>r} s_j^2 + outside) / ||D||^2) <= max_residual.

    ``spectrum``: singular values s_1 >= s_2 >= ... of a delta D, as many as were computed; ``outside``: the
    energy ||D||_F^2 not in their directions (0 for a full spectrum), so ||D||^2 = sum_j s_j^2 + outside. The
    tails are summed from the smallest value up (nothing cancels). len(spectrum) when no r is within the target; 0
    for a zero delta.
    """
    s = torch.as_tensor(spectrum, dtype=torch.float64).flatten()
    # energy[r] = sum_{j>=r} s_j^2 (0-based): the tail past rank r
    energy = s.square().flip(0).cumsum(0).flip(0)
    tails = torch.cat([energy, energy.new_zeros(1)]) + outside  # (len + 1,): the residual at rank 0 .. len
    total = float(tails[0])
    if total <= 0:
        return 0
    within = (tails / total).sqrt() <= max_residual  # non-increasing tails: False ... False True ... True
    return int(within.long().argmax()) if bool(within.any()) else s.numel()


def spectra_of_products(
    ws: Sequence[torch.Tensor],
    p: torch.Tensor,
    cap: int,
    power_iters: int = POWER_ITERS,
    oversample: int = OVERSAMPLE,
    probes: int = PROBES,
    seed: int = 0,
) -> list[Spectrum]:
    """The leading singular triplets of every D = W P (w (out, in), one shared p (in, in)), never forming D.

    Randomised subspace iteration: Q = orth(D Omega), ``power_iters`` times Q = orth(D orth(D^T Q)), then the
    exact SVD of the small Q^T D (q, in), q = cap + oversample (at most min(out, in)). It only multiplies by W,
    P and their transposes: P Omega is shared by all layers, and each round's products by P are one wide product
    over all layers. ||(I - Q Q^T) D||^2 is estimated as the mean of ||(I - Q Q^T) D g||^2 over ``probes``
    Gaussian g shared by all layers (unbiased for each layer and in total; relative standard error sqrt(2 / probes)
    at worst, sqrt(2 / (probes n)) when n directions share the residual evenly; shared, P g is one product instead
    of one per layer, 19 of SDXL's ~180 GFLOP).
    """
    if not ws:
        return []
    dtype = torch.float64 if all(x.dtype == torch.float64 for x in (p, *ws)) else torch.float32
    ws, p = [w.to(dtype) for w in ws], p.to(dtype)
    dim, q_max = p.shape[1], cap + oversample
    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(dim, q_max, generator=g, dtype=dtype)  # (in, q), shared by all layers
    gauss = torch.randn(dim, probes, generator=g, dtype=dtype)  # (in, k), shared by all layers
    p_both = p @ torch.cat([omega, gauss], dim=1)  # (in, q + k)
    images = [w @ p_both for w in ws]  # D [Omega G], (out, q + k) per layer
    bases = [_orth(y[:, : min(q_max, *w.shape)]) for w, y in zip(ws, images, strict=True)]  # (out, q)
    for _ in range(power_iters):
        back = [_orth(z.T) for z in _adjoint(ws, p, bases)]  # (in, q): basis of the range of D^T Q
        bases = [_orth(w @ y) for w, y in zip(ws, _p_times(p, back), strict=True)]  # (out, q)
    out = []
    for q, z, y in zip(bases, _adjoint(ws, p, bases), images, strict=True):
        u, s, vh = _svd_wide(z.double())  # Q^T D = u s vh
        out.append(Spectrum(q.double() @ u, s, vh, _outside(q, y[:, q_max:]), dtype))
    return out


def spectrum(delta: torch.Tensor, cap: int, exact: bool | None = None) -> Spectrum:
    """The leading singular triplets of a formed delta (out, in), at least ``cap`` of them, in float64.

    ``exact`` (``None``: for layers up to ``NARROW`` wide, or when cap + 8 reaches min(out, in)): the full SVD;
    else a randomised one at q = cap + 8 (3 power iterations) with the energy it misses measured on the delta.
    """
    d = delta.double()
    dtype = torch.float64 if delta.dtype == torch.float64 else torch.float32
    if exact is None:
        exact = min(d.shape) <= NARROW
    if exact or min(d.shape) <= cap + 8:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)  # (out, k), (k,), (k, in)
        return Spectrum(u, s, vh, 0.0, dtype)
    u, s, v = torch.svd_lowrank(d, q=cap + 8, niter=3)  # (out, q), (q,), (in, q)
    outside = float((d - u @ (u.T @ d)).square().sum())
    return Spectrum(u, s, v.T, outside, dtype)


def factorize_within(
    delta: torch.Tensor, max_residual: float, cap: int, exact: bool | None = None
) -> Factors:
    """``factorize(delta, r)`` at the smallest r (1 .. cap, and min(out, in)) whose relative residual is at most
    ``max_residual``; the residual returned is measured on the delta."""
    sp = spectrum(delta, cap, exact)
    a, b, _, _ = sp.factors(min(cap, sp.rank_for(max_residual)))
    return a, b, *_measured(delta, a, b)


def low_rank_within(
    delta: torch.Tensor, max_residual: float, cap: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``low_rank`` at the smallest rank whose relative residual is at most ``max_residual`` (exact SVD in
    float64; ``cap`` bounds the rank, default min(out, in))."""
    a, b, residual, total = factorize_within(
        delta.double(), max_residual, cap or min(delta.shape), exact=True
    )
    relative = math.sqrt(residual / total) if total > 0 else 0.0
    return a.float().contiguous(), b.float().contiguous(), relative


def _adjoint(ws: Sequence[torch.Tensor], p: torch.Tensor, bases: list[torch.Tensor]) -> list[torch.Tensor]:
    """(D^T Q)^T = Q^T W P (q, in) for every layer's w (out, in) and q (out, q); Q^T W is 40% faster than W^T Q."""
    rows = [q.T @ w for w, q in zip(ws, bases, strict=True)]  # (q, in)
    return list((torch.cat(rows) @ p).split([x.shape[0] for x in rows]))  # one tall product for all layers


def _p_times(p: torch.Tensor, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
    """p @ x for each x (in, q_l), as one wide product (a product per layer runs ~35% slower)."""
    return list((p @ torch.cat(blocks, dim=1)).split([x.shape[1] for x in blocks], dim=1))


def _svd_wide(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of a wide z (q, in) through z^T = Q R: 2x faster than LAPACK's on (24, 2048)."""
    q, r = torch.linalg.qr(z.T)  # (in, q), (q, q)
    u, s, vh = torch.linalg.svd(r.T)  # (q, q) each
    return u, s, vh @ q.T  # (q, q), (q,), (q, in)


def _orth(y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (n, q) of the columns of y (n, q)."""
    return torch.linalg.qr(y).Q


def _outside(q: torch.Tensor, images: torch.Tensor) -> float:
    """||(I - Q Q^T) D||_F^2 estimated from D g_i (out, k), g_i ~ N(0, I): mean_i ||(I - Q Q^T) D g_i||^2."""
    if images.shape[1] == 0:
        return 0.0
    q, y = q.double(), images.double()
    return float((y - q @ (q.T @ y)).square().sum()) / y.shape[1]


def _lora(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (rank, in) = sqrt(S) V^T and B (out, rank) = U sqrt(S) from the leading singular triplets, zero-padded."""
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    root = s.clamp_min(0).sqrt()
    b = u * root  # (out, r)
    a = root[:, None] * vh  # (r, in)
    r = s.numel()
    if r < rank:  # every module gets the requested rank
        a = torch.cat([a, a.new_zeros(rank - r, a.shape[1])])
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - r)], dim=1)
    return a.contiguous(), b.contiguous()


def _measured(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """||d - b a||^2 and ||d||^2 in float64, measured directly: ||d||^2 - sum s_r^2 cancels badly in float32."""
    d64 = d.double()
    return float((d64 - b.double() @ a.double()).square().sum()), float(d64.square().sum())
