"""Merging patches into one: exact concatenation (the weighted sum of deltas) or SVD re-compression.

Concatenation, per module:  A = cat_i(w_i A_i) along ranks (dim 0),  B = cat_i(B_i) (dim 1), so that
B @ A = sum_i w_i B_i A_i exactly and the merged rank is the sum of the parents' ranks. A module that a parent lacks
contributes zero factors, keeping one rank everywhere. SVD re-compression factors that same sum at a chosen rank, or
at the smallest rank per module within a residual target (``rank="auto"``), and reports the relative Frobenius
residual per module and in total (zero while the rank covers the delta's true rank). Text-encoder factors merge
the same way, component by component (a patch without them contributes zeros there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import values
from ..errors import FmnPatchError
from ..values import AUTO, Rank
from .header import PatchConcept, PatchInfo
from .lowrank import MAX_RESIDUAL
from .patch import Patch


@dataclass(frozen=True)
class MergeReport:
    """Residual of an SVD merge: relative Frobenius error per module and over all modules (0 for exact)."""

    residuals: dict[str, float]
    total: float


def merge_patches(
    patches: Sequence[Patch],
    weights: Sequence[float] | None = None,
    *,
    rank: Rank | None = None,
    max_residual: float = MAX_RESIDUAL,
    title: str = "",
) -> tuple[Patch, MergeReport]:
    """Merge patches into one. ``rank=None`` concatenates (exact); an int re-compresses by truncated SVD (capped
    at min(in, out) per module); ``"auto"`` re-compresses each module at the smallest rank whose relative
    residual is at most ``max_residual``."""
    if rank is not None:
        values.rank(rank, "rank", example="8 or 'auto' (or None: exact)")
        values.residual(max_residual, "max_residual")
    if len(patches) < 2:
        raise FmnPatchError(f"merge needs at least two patches, got {len(patches)}")
    weights = check_weights(patches, weights)
    _check_same_layout(patches)
    info = _merged_info(patches, weights, rank, max_residual, title)
    component = patches[0].component
    encoders = sorted({c for p in patches for c in p.encoders})
    if rank is None:
        merged = Patch(
            _concatenate(patches, weights, component),
            info,
            component,
            {c: _concatenate(patches, weights, c) for c in encoders},
        )
        return merged, MergeReport({m: 0.0 for m in [*merged.modules, *merged.encoder_modules]}, 0.0)
    deltas = {m: sum_of_deltas(patches, weights, m, component) for m in _all_modules(patches, component)}
    encoder_deltas = {
        c: {m: sum_of_deltas(patches, weights, m, c) for m in _all_modules(patches, c)} for c in encoders
    }
    if rank == AUTO:
        merged, residuals = Patch.from_deltas_within(deltas, max_residual, info, component, encoder_deltas)
    else:
        merged, residuals = Patch.from_deltas(deltas, rank, info, component, encoder_deltas)
    norms = {m: float(d.norm()) for m, d in deltas.items()}
    norms |= {f"{c}.{m}": float(d.norm()) for c, ds in encoder_deltas.items() for m, d in ds.items()}
    total_sq = sum(n * n for n in norms.values())
    total = math.sqrt(sum((residuals[m] * norms[m]) ** 2 for m in norms) / total_sq) if total_sq else 0.0
    merged.info.extra["svd_residual"] = {"total": total, "per_module": residuals}
    return merged, MergeReport(residuals, total)


def check_weights(patches: Sequence[Patch], weights: Sequence[float] | None) -> list[float]:
    """One weight per patch: none given means 1 each, one given applies to all. Each must be finite and at most
    ``MAX_WEIGHT`` either way (a negative weight inverts a patch)."""
    if weights is None or len(weights) == 0:
        return [1.0] * len(patches)
    checked = [values.weight(w) for w in weights]
    if len(checked) == 1 and len(patches) > 1:
        return checked * len(patches)
    if len(checked) != len(patches):
        raise FmnPatchError(
            f"got {len(weights)} weights for {len(patches)} patches; give one --weight per patch, or one for all"
        )
    return checked


def sum_of_deltas(
    patches: Sequence[Patch], weights: Sequence[float], module: str, component: str | None = None
) -> torch.Tensor:
    """sum_i w_i B_i A_i for one module of ``component`` (default: the patches' own), (out, in), float32."""
    total: torch.Tensor | None = None
    for patch, w in zip(patches, weights, strict=True):
        factors = patch.parts().get(component or patch.component, {})
        if module in factors:
            a, b = factors[module]
            d = w * (b.float() @ a.float())
            total = d if total is None else total + d
    assert total is not None, module
    return total


def _concatenate(
    patches: Sequence[Patch], weights: Sequence[float], component: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    factors = {}
    parts = [p.parts().get(component, {}) for p in patches]
    shapes = {m: (b.shape[0], a.shape[1]) for part in parts for m, (a, b) in part.items()}
    for module in _all_modules(patches, component):
        out_f, in_f = shapes[module]
        a_parts, b_parts = [], []
        for patch, part, w in zip(patches, parts, weights, strict=True):
            if module in part:
                a, b = part[module]
                a_parts.append(w * a.float())  # (r_i, in)
                b_parts.append(b.float())  # (out, r_i)
            else:
                a_parts.append(torch.zeros(patch.rank, in_f))
                b_parts.append(torch.zeros(out_f, patch.rank))
        factors[module] = (torch.cat(a_parts, dim=0), torch.cat(b_parts, dim=1))  # (sum r, in), (out, sum r)
    return factors


def _all_modules(patches: Sequence[Patch], component: str) -> list[str]:
    return sorted({m for p in patches for m in p.parts().get(component, {})})


def _check_same_layout(patches: Sequence[Patch]) -> None:
    components = sorted({p.component for p in patches})
    if len(components) > 1:
        raise FmnPatchError(
            f"cannot merge patches of different model families (components {components}); merge patches made "
            "for one base architecture"
        )
    shapes: dict[str, tuple[int, int]] = {}
    for patch in patches:
        for module, (a, b) in _qualified(patch).items():
            shape = (b.shape[0], a.shape[1])
            if shapes.setdefault(module, shape) != shape:
                raise FmnPatchError(
                    f"cannot merge: {module} is {shapes[module][0]}x{shapes[module][1]} in one patch and "
                    f"{shape[0]}x{shape[1]} in '{patch.info.title or patch.concept_names}'; the patches were made "
                    "for different architectures"
                )


def _qualified(patch: Patch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every module's factors by its name in the patch's own component, ``<component>.<module>`` elsewhere."""
    return {
        (m if c == patch.component else f"{c}.{m}"): f
        for c, factors in patch.parts().items()
        for m, f in factors.items()
    }


def _merged_info(
    patches: Sequence[Patch], weights: Sequence[float], rank: Rank | None, max_residual: float, title: str
) -> PatchInfo:
    first = patches[0].info
    concepts: list[PatchConcept] = []
    for patch in patches:
        concepts += [c for c in patch.info.concepts if c not in concepts]
    same_base = all(p.info.base_hash == first.base_hash for p in patches)
    # the parents with text-encoder factors must agree on their encoders for the merge to keep a record of them
    encoder_hashes = {p.info.encoder_hash for p in patches if p.encoders}
    parents = tuple(
        {
            "title": p.info.title or ", ".join(p.concept_names) or p.info.method,
            "hash": p.tensor_hash(),
            "weight": w,
            "method": p.info.method,
            "concepts": p.concept_names,
            "rank": p.rank,
        }
        for p, w in zip(patches, weights, strict=True)
    )
    return PatchInfo(
        method="merge",
        concepts=tuple(concepts),
        base_model=first.base_model if same_base else None,
        base_revision=first.base_revision if same_base else None,
        base_hash=first.base_hash if same_base else None,
        encoder_hash=encoder_hashes.pop() if len(encoder_hashes) == 1 else None,
        architecture=first.architecture,
        title=title,
        config={
            "combination": "cat" if rank is None else "svd",
            "rank": rank,
            "weights": list(weights),
            **({"max_residual": max_residual} if rank == AUTO else {}),
        },
        parents=parents,
    )
