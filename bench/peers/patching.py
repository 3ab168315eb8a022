"""What the peer methods share: names and anchors checked, the base's text states and key/value weights read, and
a dense edit written as an exact full-rank patch.

A peer method computes new weights W' for some of the base's text-side key/value projections. ``exact_factors``
turns each delta D = W' - W (out, in) into LoRA factors of rank min(out, in) whose product is D itself: D on one
side and an identity on the other (B = D, A = I when out >= in; B = I, A = D otherwise). Nothing is truncated or
rounded beyond D's own float32 storage, so the patch is the method's edit, not a low-rank approximation of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, get_args

import torch

from fmn_patch.concepts.bench import load_bench
from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import Base
from fmn_patch.format.category import Category
from fmn_patch.format.header import PatchConcept, PatchInfo
from fmn_patch.format.patch import Patch

#: Which projections a method edits, as the original scripts name them (SPEED's ``--params``).
Params = Literal["K", "V", "KV"]
PARAMS: tuple[Params, ...] = get_args(Params)
#: The module name's last part for each projection letter (the UNet family's cross-attention names).
PROJECTIONS: Mapping[str, str] = {"K": "to_k", "V": "to_v"}


def check_params(params: object) -> None:
    if params not in PARAMS:
        raise FmnPatchError(f"params={params!r} must be one of {', '.join(PARAMS)}, e.g. 'KV'")


def check_names(erase: Sequence[str]) -> list[str]:
    """The erased concept names as a list; refuses a bare string, an empty list and blank names."""
    if isinstance(erase, str):
        raise FmnPatchError(f"erase takes a list of concept names, e.g. [{erase!r}], not a string")
    names = list(erase)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise FmnPatchError(f"erase={names!r} must name at least one concept, e.g. ['circle']")
    return names


def check_texts(preserve: Sequence[str]) -> list[str]:
    """The preserve texts as a list; refuses a bare string."""
    if isinstance(preserve, str):
        raise FmnPatchError(f"preserve takes a list of texts, e.g. [{preserve!r}], not a string")
    return list(preserve)


def anchors_for(names: Sequence[str], anchor: str | Sequence[str]) -> list[str]:
    """One anchor (guide) per erased concept: the same text for all, or one each, as both original scripts take."""
    anchors = [anchor] * len(names) if isinstance(anchor, str) else list(anchor)
    if len(anchors) == 1:
        anchors = anchors * len(names)
    if len(anchors) != len(names) or not all(isinstance(a, str) for a in anchors):
        raise FmnPatchError(
            f"got {len(anchors)} anchors for {len(names)} concepts; give one anchor text for all, or one each"
        )
    return anchors


def last_token(ids: Sequence[int]) -> int:
    """The position of a prompt's last real token (BOS for an empty prompt): ``attention_mask.sum() - 2`` in both
    original scripts, for true-length ids BOS .. EOS."""
    return len(ids) - 2


def batches(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def weights(base: Base, params: Params) -> dict[str, torch.Tensor]:
    """The (out, in) float64 CPU weights of the targets ``params`` selects, in model order."""
    wanted = {PROJECTIONS[p] for p in params}
    out: dict[str, torch.Tensor] = {}
    for name, layer in base.family.adapters.targets().items():
        projection = name.rsplit(".", 1)[-1]
        if projection not in PROJECTIONS.values():
            raise FmnPatchError(
                f"target {name!r} is not a to_k/to_v projection; the peer methods edit UNet cross-attention only"
            )
        if projection in wanted:
            out[name] = layer.weight.detach().to("cpu", torch.float64)
    return out


def exact_factors(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA factors A (r, in), B (out, r), r = min(out, in), with B @ A == delta exactly (float32)."""
    d = delta.float().contiguous()
    out, dim = d.shape
    if out >= dim:
        return torch.eye(dim), d  # A = I (in, in), B = D (out, in)
    return d, torch.eye(out)  # A = D (out, in), B = I (out, out)


def peer_patch(
    base: Base,
    method: str,
    names: Sequence[str],
    deltas: Mapping[str, torch.Tensor],
    config: Any,
    extra: Mapping[str, Any],
) -> Patch:
    """The patch of a peer method's dense deltas (out, in) per module, with its config and facts in the header."""
    described = base.describe()
    info = PatchInfo(
        method=method,
        concepts=tuple(PatchConcept(n, c) for n, c in zip(names, _categories(base, names), strict=True)),
        base_model=described.model,
        base_revision=described.revision,
        base_hash=described.hash,
        architecture=described.architecture,
        config=dataclasses.asdict(config),
        extra=dict(extra),
    )
    factors = {name: exact_factors(d) for name, d in deltas.items()}
    return Patch(factors, info, base.family.adapters.component)


def _categories(base: Base, names: Sequence[str]) -> list[Category]:
    """Each concept's category in the base's ConceptBench, "other" where the bench does not list it."""
    try:
        bench = load_bench(base.bench)
    except FmnPatchError:
        return ["other"] * len(names)
    found = [bench.find(n) for n in names]
    return [c.category if c is not None else "other" for c in found]


def padded_gram(text: Any, prompts: Sequence[str], dim: int, size: int) -> tuple[torch.Tensor, int]:
    """sum k k^T (dim, dim), float64, over every position of each prompt padded to the max length, and the row
    count: the preservation term of UCE's and MACE's closed forms."""
    kk = torch.zeros(dim, dim, dtype=torch.float64)
    rows = 0
    for chunk in batches(prompts, size):
        k = text.encode(chunk, text.max_length).double().flatten(0, 1)  # (B L, dim)
        kk, rows = kk + k.T @ k, rows + k.shape[0]
    return kk, rows
