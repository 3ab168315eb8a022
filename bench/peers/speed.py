"""SPEED (Li, Wang, Hu, Jiang, Liang, Hao, Ma and Feng, "SPEED: Scalable, Precise, and Efficient Concept Erasure
for Diffusion Models", ICLR 2026, arXiv 2503.07392), re-implemented faithfully as a peer baseline for the benches.

Source: the authors' code, Ouxiang-Li/SPEED ``train_erase_null.py`` (``edit_model``, ``generate_perturbed_embs``,
``__main__``; unchanged since 4ebb527, March 2025, read at 6d3df0c) and the README's commands. Of the paper only the
abstract and secondary summaries could be read here (null-space editing refined by IPF, DPA and IEC); every detail
below is the code's, which is followed wherever the two might differ. The recipe:

- Projections: cross-attention ``to_v`` only (``--params V``, the default; ``K`` and ``KV`` are options).
- Erase rows: each erased name's last real token (``attention_mask.sum() - 2``) and the anchor's (an empty anchor
  gives its SOT state). The code's one special case is kept: erasing exactly ["nudity"] uses every position after
  SOT of both padded sequences. tt = mean over concepts of sum c c^T, at = mean of sum a c^T.
- Retain rows (the prior): each preserve text's last real token, the texts that contain an erased name as a whole
  word (case-insensitive) dropped, duplicates dropped (the code reads a CSV column's ``unique()``); with no
  preserve text, every position after SOT of the padded empty prompt. Shuffled once.
- For each projection W, with E = W (at - tt)(I + tt)^-1 the unconstrained edit:
  - Influence-based Prior Filtering (IPF): keep the retain rows whose ||E c|| is above their mean (when
    ``aug_num`` > 0 and ``filter``; the README's multi-concept runs turn it off).
  - Directed Prior Augmentation (DPA): in chunks of ``chunk_size`` rows, ``aug_num`` copies of each row moved along
    W's least significant input direction v (the last right singular vector of its reduced SVD), c + (n . v) v with
    n ~ N(0, I); of each chunk's copies, those whose ||E c'|| is above their mean join the retain rows.
  - Null space: P = U_0 U_0^T over the singular vectors of the retain rows' mean Gram whose singular values are
    below ``threshold``.
  - Invariant Equality Constraints (IEC): K2 (in, 1 + clusters) = the empty prompt's SOT state and the k-means
    (3) centres of its other (EOS, padding) states; W' K2 = W K2 exactly when lamb = 0.
  - Closed form: M = (tt P + retain_scale I)^-1 and
    Delta = W (at - tt) P (I - M K2 (K2^T P M K2 + lamb I)^-1 K2^T P) M, W' = W + Delta: the minimiser of
    mean_i ||W' c_i - W a_i||^2 + retain_scale ||Delta||^2 over Delta = Delta P with Delta K2 = 0 (lamb = 0).
- Defaults (its argparse): aug_num 10, threshold 0.1, retain_scale 1.0, lamb 0.0, filter on, seed 0, 3 clusters,
  chunks of 128. The README's 10-celebrity command uses retain_scale 0.05 and ``--disable_filter``:
  ``MULTI_CONCEPT``.

Deviations: float64 throughout (the code: float32 on CUDA); an own RNG (a torch.Generator seeded by ``seed``; the
code's global CUDA RNG cannot be matched bit for bit) for the k-means start, the shuffle and the DPA noise, drawn as
the scalar n . v ~ N(0, 1), the same distribution; k-means as kmeans_pytorch runs it (distinct random rows as
initial centres, Lloyd steps until (sum of the centres' moves)^2 < 1e-4) except that an empty cluster keeps its
centre (kmeans_pytorch's released code makes it NaN); (K2^T P M K2 + lamb I)^-1 is a pseudo-inverse: the inverse
where it exists, and where the null space holds fewer independent directions of K2 (the constraints are then
redundant, never contradictory, and the code's inverse is singular) still the constrained minimiser; IPF keeps every
row when none is above the mean (a single retain row: the code crashes there); the text states are the family's
(SD 1.x/2.x the last hidden state, as the code; SDXL both encoders' penultimate states, which the code does not
support); the toy model's tokenizer has L = 20 instead of 77, so the empty prompt has 19 states to cluster instead
of 76. ``threshold`` is absolute and was set for CLIP's 768-dim states; it is kept as is for the toy's 64-dim
states (norms about 7), not rescaled.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fmn_patch import values
from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import Base
from fmn_patch.families.threads import sized_threads
from fmn_patch.format.patch import Patch

from .patching import (
    Params,
    anchors_for,
    batches,
    check_names,
    check_params,
    check_texts,
    last_token,
    peer_patch,
    weights,
)

#: k-means stops when (sum of the centres' moves)^2 falls below this: kmeans_pytorch's test and default ``tol``.
KMEANS_TOL = 1e-4
KMEANS_MAX_STEPS = 1000
#: Singular values of (K2^T P M K2 + lamb I) below this fraction of the largest count as zero in its pseudo-inverse.
PINV_RTOL = 1e-10


@dataclass(frozen=True)
class SpeedConfig:
    """train_erase_null.py's hyper-parameters (its argparse defaults); every field is recorded in the patch."""

    threshold: float = 0.1  # retain-Gram singular values below it span the null space the edit lives in
    retain_scale: float = 1.0  # ridge on the edit, retain_scale ||Delta||^2
    lamb: float = 0.0  # softens the invariants; 0 keeps W' K2 = W K2 exactly
    aug_num: int = 10  # DPA copies of each retain row (0: no augmentation and no IPF)
    filter: bool = True  # IPF on the retain rows (the code's --disable_filter turns it off)
    params: Params = "V"  # the projections edited: to_v
    clusters: int = 3  # k-means centres of the empty prompt's non-SOT states among the invariants
    chunk_size: int = 128  # retain rows per DPA chunk: copies are filtered against their chunk's mean
    seed: int = 0
    batch_size: int = 64  # prompts per text-encoder call (no effect on the result)

    def __post_init__(self) -> None:
        values.number(self.threshold, "threshold", 0, 1e6, above=True, example="0.1")
        values.number(self.retain_scale, "retain_scale", 0, 1e6, above=True, example="1.0 (or 0.05)")
        values.number(self.lamb, "lamb", 0, 1e6, example="0.0")
        values.whole(self.aug_num, "aug_num", 0, 10_000, example=10)
        if not isinstance(self.filter, bool):
            raise FmnPatchError(f"filter={self.filter!r} must be True or False")
        check_params(self.params)
        values.whole(self.clusters, "clusters", 0, 1000, example=3)
        values.whole(self.chunk_size, "chunk_size", 1, values.MAX_BATCH, example=128)
        values.seed(self.seed)
        values.whole(self.batch_size, "batch_size", 1, values.MAX_BATCH, example=64)


#: The README's multi-concept recipe (10 celebrities): a weaker ridge and no IPF on a retain set far from full rank.
MULTI_CONCEPT = SpeedConfig(retain_scale=0.05, filter=False)


def speed_projector(retain: torch.Tensor, threshold: float) -> torch.Tensor:
    """P (in, in): projection onto the approximate null space of the retain rows (n, in), the singular vectors of
    their mean Gram with singular values below ``threshold`` (all of the space when there is no row)."""
    gram = retain.T @ retain / max(retain.shape[0], 1)  # (in, in)
    u, s, _ = torch.linalg.svd(gram)
    u0 = u[:, s < threshold]  # (in, m)
    return u0 @ u0.T


def speed_unconstrained(w: torch.Tensor, tt: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """E (out, in) = W (at - tt)(I + tt)^-1: the edit without prior, whose effect on a retain row ranks it (IPF)."""
    eye = torch.eye(tt.shape[0], dtype=tt.dtype)
    return w @ torch.linalg.solve(eye + tt, at - tt, left=False)


def speed_delta(
    w: torch.Tensor,
    tt: torch.Tensor,
    at: torch.Tensor,
    p: torch.Tensor,
    k2: torch.Tensor,
    retain_scale: float,
    lamb: float,
) -> torch.Tensor:
    """Delta (out, in) = W' - W of one projection w (out, in). tt = mean c c^T, at = mean a c^T (in, in) over the
    erased concepts (c) and their anchors (a); p (in, in) the retain null-space projection; k2 (in, m) the
    invariants, kept exactly when lamb = 0."""
    eye = torch.eye(tt.shape[0], dtype=tt.dtype)
    m = torch.linalg.inv(tt @ p + retain_scale * eye)  # (in, in)
    s = k2.T @ p @ m @ k2 + lamb * torch.eye(k2.shape[1], dtype=tt.dtype)  # (m, m), symmetric, PSD
    s_inv = torch.linalg.pinv((s + s.T) / 2, rtol=PINV_RTOL, hermitian=True)
    constrained = eye - m @ k2 @ s_inv @ k2.T @ p  # (in, in): takes out what would move W K2
    return w @ (at - tt) @ p @ constrained @ m


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k centres (k, d) of the rows of x (n, d): Lloyd's steps from k distinct random rows (kmeans_pytorch's)."""
    if k == 0:
        return x[:0]
    centres = x[torch.randperm(x.shape[0], generator=generator)[:k]].clone()
    for _ in range(KMEANS_MAX_STEPS):
        owner = torch.cdist(x, centres).argmin(dim=1)  # (n,)
        before = centres.clone()
        for j in range(k):
            if bool((owner == j).any()):
                centres[j] = x[owner == j].mean(dim=0)
        if float((centres - before).norm(dim=1).sum()) ** 2 < KMEANS_TOL:
            break
    return centres


def prior_filter(rows: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """IPF: the rows (n, in) whose ||E c|| is above the mean over rows (all of them when none is)."""
    norms = (rows @ e.T).norm(dim=1)  # (n,)
    above = norms > norms.mean()
    return rows[above] if bool(above.any()) else rows


def prior_augment(
    chunk: torch.Tensor, v: torch.Tensor, e: torch.Tensor, copies: int, generator: torch.Generator
) -> torch.Tensor:
    """DPA: ``copies`` copies of each row of chunk (b, in) moved along v (in,), c + z v with z ~ N(0, 1) (noise
    n @ v v^T, n ~ N(0, I)); those whose ||E c'|| is above the copies' mean."""
    z = torch.randn(copies * chunk.shape[0], 1, generator=generator, dtype=chunk.dtype)  # (copies b, 1)
    moved = chunk.repeat(copies, 1) + z * v  # (copies b, in)
    norms = (moved @ e.T).norm(dim=1)
    return moved[norms > norms.mean()]


@sized_threads
def speed_patch(
    base: Base,
    erase: Sequence[str],
    anchor: str | Sequence[str],
    preserve: Sequence[str] = (),
    config: SpeedConfig | None = None,
) -> Patch:
    """A patch that erases the ``erase`` concepts from ``base`` with SPEED, each toward its ``anchor``.

    ``anchor``: one text for all or one per concept (the README: "" for characters, "art" for styles, "person" for
    celebrities). ``preserve``: the retain set, concept names (the README's CSVs); without it, the empty prompt's
    states. The patch holds every edited projection's exact delta (LoRA rank min(out, in)).
    """
    base.family.require_closed_form()
    config = config or SpeedConfig()
    names = check_names(erase)
    anchors = anchors_for(names, anchor)
    t0 = time.perf_counter()
    targets = weights(base, config.params)
    text = base.family.text.text_states()
    generator = torch.Generator().manual_seed(config.seed)
    null = text.encode([""], text.max_length)[0].double()  # (L, dim): SOT, EOS, padding
    if config.clusters > null.shape[0] - 1:
        raise FmnPatchError(
            f"clusters={config.clusters} exceeds the empty prompt's {null.shape[0] - 1} states after SOT; "
            f"give at most {null.shape[0] - 1}"
        )
    k2 = torch.cat([null[:1], kmeans(null[1:], config.clusters, generator)]).T  # (dim, 1 + clusters)
    tt, at = _moments(text, names, anchors, config.batch_size)
    kept = _retain_texts(names, check_texts(preserve))
    # (n, dim); no text, or only the empty one: every state of the empty prompt after SOT, as the code does
    retain = _last_states(text, kept, config.batch_size) if kept not in ([], [""]) else null[1:]
    retain = retain[torch.randperm(retain.shape[0], generator=generator)]
    t1 = time.perf_counter()
    deltas, null_dims, rows = {}, {}, {}
    for name, w in targets.items():
        e = speed_unconstrained(w, tt, at)  # (out, dim)
        v = torch.linalg.svd(w, full_matrices=False).Vh[-1]  # (dim,): W's least significant input direction
        prior = prior_filter(retain, e) if config.aug_num > 0 and config.filter else retain
        parts = []
        for chunk in prior.split(config.chunk_size):
            parts.append(chunk)
            if config.aug_num > 0:
                parts.append(prior_augment(chunk, v, e, config.aug_num, generator))
        prior = torch.cat(parts)
        p = speed_projector(prior, config.threshold)
        deltas[name] = speed_delta(w, tt, at, p, k2, config.retain_scale, config.lamb)
        null_dims[name] = round(float(p.trace()))
        rows[name] = prior.shape[0]
    t2 = time.perf_counter()
    extra = {
        "source": "Ouxiang-Li/SPEED train_erase_null.py (6d3df0c)",
        "anchors": dict(zip(names, anchors, strict=True)),
        "preserve": len(kept),
        "retain_rows": rows,
        "null_dims": null_dims,
        "invariants": k2.shape[1],
        "seconds": {"encode": t1 - t0, "solve": t2 - t1, "total": t2 - t0},
    }
    return peer_patch(base, "speed", names, deltas, config, extra)


def _moments(text: Any, names: list[str], anchors: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """tt = mean over concepts of sum c c^T and at = mean of sum a c^T (dim, dim), c the concept's rows, a the
    anchor's: the last real token of each, or every position after SOT when the erase list is exactly ["nudity"]."""
    if names == ["nudity"]:  # the code's one special case
        c = text.encode(names, text.max_length)[0, 1:].double()  # (L - 1, dim)
        a = text.encode(anchors, text.max_length)[0, 1:].double()
    else:
        c, a = _last_states(text, names, size), _last_states(text, anchors, size)  # (N, dim) each
    return c.T @ c / len(names), a.T @ c / len(names)


def _retain_texts(names: list[str], preserve: Sequence[str]) -> list[str]:
    """The preserve texts without those naming an erased concept (a whole word, any case), each once."""
    words = [re.compile(r"\b" + re.escape(n.lower()) + r"\b") for n in names]
    kept = [t for t in dict.fromkeys(preserve) if not any(w.search(t.lower()) for w in words)]
    if preserve and not kept:
        raise FmnPatchError(
            "every preserve text names an erased concept; give other concepts to retain, or none (the empty "
            "prompt's states are retained then)"
        )
    return kept


def _last_states(text: Any, prompts: Sequence[str], size: int) -> torch.Tensor:
    """The state of each prompt's last real token, (n, dim) float64."""
    out = []
    for chunk in batches(prompts, size):
        states = text.encode(chunk, 0).double()  # (B, T, dim), T the longest true length
        index = torch.tensor([last_token(ids) for ids in text.ids(chunk)])
        out.append(states[torch.arange(len(chunk)), index])
    return torch.cat(out)
