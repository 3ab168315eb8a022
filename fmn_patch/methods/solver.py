"""The closed-form key/value edit: a ridge least squares shared by every cross-attention projection.

For a projection W (out, in) of a text-side key/value projection, erase embeddings c_e with target embeddings t_e
(the anchor's, possibly pushed further away from the concept), and preserved embeddings c_k, the edit minimises

    sum_e w_e ||W' c_e - W t_e||^2 + sum_k w_k ||W' c_k - W c_k||^2 + lam ||W' - W||^2

whose solution (UCE, Gandikota et al. 2024, eq. 6; TIME, Orgad et al. 2023) is

    W' = (sum_e w_e W t_e c_e^T + sum_k w_k W c_k c_k^T + lam W) (sum_e w_e c_e c_e^T + sum_k w_k c_k c_k^T + lam I)^-1.

Improvement used here: every target is W times an embedding, so W factors out on the left and

    W' - W = W P,    P = (sum_e w_e (t_e - c_e) c_e^T) G^-1,    G = sum_e w_e c_e c_e^T + sum_k w_k c_k c_k^T + lam I.

P (in, in) is the same for every layer that reads the same text states: one (in x in) solve serves all 32 (SD 1.x)
or 140 (SDXL) projections, and the sums are two (in x in) matrices however many concepts stream through them.
``ridge_solve`` is the textbook per-layer form, kept as the reference the tests compare against. The LoRA factors of
each W P come from ``fmn_patch.format.lowrank``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def ridge_solve(
    w: torch.Tensor,
    erase: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor,
    lam: float,
    erase_weight: float = 1.0,
    keep_weight: float = 1.0,
) -> torch.Tensor:
    """Reference: the edited weight W' of one projection, solved directly (float64).

    w (out, in); erase (n, in) embeddings to re-map; target (n, out) the keys/values they should give;
    keep (k, in) embeddings whose keys/values should stay W c. Returns W' (out, in) in w's dtype.
    """
    w64, c_e, c_k, t = w.double(), erase.double(), keep.double(), target.double()
    eye = torch.eye(w.shape[1], dtype=torch.float64)
    lhs = erase_weight * t.T @ c_e + keep_weight * w64 @ c_k.T @ c_k + lam * w64  # (out, in)
    gram = erase_weight * c_e.T @ c_e + keep_weight * c_k.T @ c_k + lam * eye  # (in, in)
    return torch.linalg.solve(gram, lhs.T).T.to(w.dtype)  # lhs @ gram^-1 (gram is symmetric)


@dataclass
class NormalEquations:
    """The two (in, in) sums of the shared solve, accumulated in float64 as embeddings stream through.

    ``add_erase(c, t)`` asks for W' c = W t; ``add_keep(c)`` for W' c = W c. Memory is O(in^2) whatever the count.
    """

    dim: int
    gram: torch.Tensor = field(init=False)  # (in, in): sum w c c^T over erase and keep rows
    shift: torch.Tensor = field(init=False)  # (in, in): sum_e w_e (t_e - c_e) c_e^T
    erase_rows: int = 0
    keep_rows: int = 0

    def __post_init__(self) -> None:
        self.gram = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        self.shift = torch.zeros(self.dim, self.dim, dtype=torch.float64)

    def add_erase(self, c: torch.Tensor, t: torch.Tensor, weight: float = 1.0) -> None:
        """c, t (n, in): embeddings to re-map and the embeddings whose keys/values they should give."""
        c, t = c.double(), t.double()
        self.gram += weight * c.T @ c
        self.shift += weight * (t - c).T @ c
        self.erase_rows += c.shape[0]

    def add_keep(self, c: torch.Tensor, weight: float = 1.0) -> None:
        """c (k, in): embeddings whose keys/values must not change."""
        c = c.double()
        self.gram += weight * c.T @ c
        self.keep_rows += c.shape[0]

    def solve(self, lam: float) -> torch.Tensor:
        """P (in, in) with W' = W (I + P) for every layer; zero when nothing was erased."""
        if lam <= 0 and self.erase_rows + self.keep_rows < self.dim:
            lam = 1e-8  # keep the system invertible
        gram = self.gram + lam * torch.eye(self.dim, dtype=torch.float64)
        factor = torch.linalg.cholesky(gram)  # gram = L L^T, symmetric positive definite for lam > 0
        return torch.cholesky_solve(self.shift.T, factor).T  # shift @ gram^-1, (in, in)


def layer_delta(w: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """W' - W = W P for one projection: w (out, in), p (in, in) -> (out, in) float32."""
    return w.float() @ p.float()
