"""UCE, Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzyńska and Bau, WACV 2024, arXiv 2308.14761),
re-implemented faithfully as a peer baseline for the benches.

Source: the authors' code, rohitgandikota/unified-concept-editing, ``train-scripts/train_erase.py`` (``edit_model``
and its ``__main__``) as it stood from August 2023 to February 2025 (commit 35e91e2): the code of the paper's
erasure results. Where the paper's equation and the code differ, the code is followed. The recipe:

- Projections: every cross-attention ``to_k`` and ``to_v`` (``edit_model(with_to_k=True)``, its default; the module's
  global ``with_to_k = False`` is never passed). Technique "replace" (the default; "tensor" is not reproduced).
- Erase rows: each erase prompt and its guide are encoded padded to the tokenizer's max length L. From each one's
  last real token (``attention_mask.sum() - 2``: the token before EOS, BOS for an empty guide) to the end of the
  padded sequence, positions are paired by their offset from that token, cut to the shorter run:
  c_j = E[e + j], t_j = G[g + j] for j < L - max(e, g). The target of c_j is v*_j = W t_j (the base's W).
- Erase prompts: each concept's name; with ``templates`` (the script's ``--add_prompts``, off by default) also
  ``ART_TEMPLATES`` or ``OBJECT_TEMPLATES`` filled with it, all guided to the bare guide word (the 2023 script does
  not template the guide).
- Guide (``anchor``): one text for all concepts or one each. The script's default is " " (the empty prompt,
  "towards_uncond"); its README erases artists towards "art".
- Preserve rows: the empty prompt and every preserve text, all L positions of each, asked to keep W k. The script
  builds its own preserve set only for artists (every other artist of its CSV, the erased names removed by
  case-insensitive equality; a ``--preserve_concepts`` string is never split, so that path fails); here the
  caller gives the set, and the same removal applies.
- Closed form, per projection: W' = (lamb W + es sum_j v*_j c_j^T + ps sum_k W k k^T)
  (lamb I + es sum_j c_j c_j^T + ps sum_k k k^T)^-1 with lamb = 0.5 (``__main__`` passes 0.5; ``edit_model``'s own
  default 0.1 is unused), erase_scale es = 1 and preserve_scale ps = max(0.1, 1 / (1 + #preserve)) (the empty
  prompt counted).

Deviations: the sums and the solve run in float64 (the script: float32 ``torch.inverse``); one shared Q with
W' = W Q serves every layer, since each target is W times an embedding (the script solves each layer alone, to the
same W'); the text states are the family's (SD 1.x/2.x the last hidden state as the script; SDXL both encoders'
penultimate states as its pipeline conditions, which the 2023 script did not support); the toy model's tokenizer
has L = 20 instead of CLIP's 77, so each erase prompt gives fewer rows. The 2025 rewrite
(``trainscripts/uce_sd_erase.py``) differs and is not followed: one row per prompt (its last token only),
preserve_scale 1, no empty prompt preserved, templated guides.
"""

from __future__ import annotations

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
    padded_gram,
    peer_patch,
    weights,
)

#: train_erase.py's ``--add_prompts`` templates, ``{concept}`` replaced by the concept's name.
ART_TEMPLATES = (
    "painting by {concept}",
    "art by {concept}",
    "artwork by {concept}",
    "picture by {concept}",
    "style of {concept}",
)
OBJECT_TEMPLATES = (
    "image of {concept}",
    "photo of {concept}",
    "portrait of {concept}",
    "picture of {concept}",
    "painting of {concept}",
)


@dataclass(frozen=True)
class UceConfig:
    """train_erase.py's hyper-parameters, as its ``__main__`` runs them; every field is recorded in the patch."""

    lamb: float = 0.5  # ridge toward the base weights, lamb ||W' - W||^2
    erase_scale: float = 1.0  # weight of each erase row
    # weight of each preserve row; None: the script's max(0.1, 1 / (1 + len(preserve)))
    preserve_scale: float | None = None
    templates: tuple[str, ...] = ()  # more erase prompts per concept, e.g. ART_TEMPLATES (--add_prompts)
    params: Params = "KV"  # the projections edited: to_k and to_v
    batch_size: int = 64  # prompts per text-encoder call (no effect on the result)

    def __post_init__(self) -> None:
        values.number(self.lamb, "lamb", 0, 1e6, above=True, example="0.5")
        values.number(self.erase_scale, "erase_scale", 0, 1e6, above=True, example=1)
        if self.preserve_scale is not None:
            values.number(self.preserve_scale, "preserve_scale", 0, 1e6, example="0.1 (None: the rule)")
        check_params(self.params)
        values.whole(self.batch_size, "batch_size", 1, values.MAX_BATCH, example=64)
        for t in self.templates:
            if not isinstance(t, str) or "{concept}" not in t:
                raise FmnPatchError(f"template {t!r} must hold '{{concept}}', e.g. 'painting by {{concept}}'")


def uce_map(
    erase_cc: torch.Tensor,
    erase_tc: torch.Tensor,
    keep_cc: torch.Tensor,
    lamb: float,
    erase_scale: float,
    preserve_scale: float,
) -> torch.Tensor:
    """Q (in, in) with W' = W Q for every projection W, from the row sums (each (in, in), float64):
    erase_cc = sum_j c_j c_j^T, erase_tc = sum_j t_j c_j^T (v*_j = W t_j), keep_cc = sum_k k k^T."""
    eye = torch.eye(erase_cc.shape[0], dtype=torch.float64)
    # W times this is lamb W + es sum v* c^T + ps sum W k k^T; gram is symmetric positive definite
    lhs = lamb * eye + erase_scale * erase_tc + preserve_scale * keep_cc  # (in, in)
    gram = lamb * eye + erase_scale * erase_cc + preserve_scale * keep_cc  # (in, in)
    return torch.linalg.solve(gram, lhs, left=False)  # lhs @ gram^-1


def uce_solve(
    w: torch.Tensor,
    erase_c: torch.Tensor,
    target_c: torch.Tensor,
    keep_c: torch.Tensor,
    lamb: float,
    erase_scale: float,
    preserve_scale: float,
) -> torch.Tensor:
    """UCE's W' (out, in) for one projection w (out, in): erase rows erase_c (n, in) re-mapped to w's outputs of
    target_c (n, in), keep_c (k, in) kept. Computed in float64, returned in w's dtype."""
    c, t, k = erase_c.double(), target_c.double(), keep_c.double()
    q = uce_map(c.T @ c, t.T @ c, k.T @ k, lamb, erase_scale, preserve_scale)  # (in, in)
    return (w.double() @ q).to(w.dtype)


@sized_threads
def uce_patch(
    base: Base,
    erase: Sequence[str],
    anchor: str | Sequence[str],
    preserve: Sequence[str] = (),
    config: UceConfig | None = None,
) -> Patch:
    """A patch that erases the ``erase`` concepts from ``base`` with UCE, each toward its ``anchor`` (guide).

    ``anchor``: one text for all or one per concept ("" is the script's default, the empty prompt). ``preserve``:
    texts whose keys/values must stay (the script's artists: every other artist's name); the empty prompt is always
    preserved. The patch holds every edited projection's exact delta (LoRA rank min(out, in)).
    """
    base.family.require_closed_form()
    config = config or UceConfig()
    names = check_names(erase)
    guides = anchors_for(names, anchor)
    t0 = time.perf_counter()
    named = list(zip(names, guides, strict=True))
    pairs = named + [(t.replace("{concept}", n), g) for n, g in named for t in config.templates]
    erased = {p.lower() for p, _ in pairs}
    kept = list(dict.fromkeys(["", *(p for p in check_texts(preserve) if p.lower() not in erased)]))
    scale = config.preserve_scale if config.preserve_scale is not None else max(0.1, 1 / len(kept))
    targets = weights(base, config.params)
    dim = next(iter(targets.values())).shape[1]
    text = base.family.text.text_states()
    erase_cc, erase_tc, erase_rows = _erase_sums(text, pairs, dim, config.batch_size)
    keep_cc, keep_rows = padded_gram(text, kept, dim, config.batch_size)
    t1 = time.perf_counter()
    q = uce_map(erase_cc, erase_tc, keep_cc, config.lamb, config.erase_scale, scale)
    shift = q - torch.eye(dim, dtype=torch.float64)  # W' - W = W (Q - I)
    deltas = {name: w @ shift for name, w in targets.items()}
    t2 = time.perf_counter()
    extra = {
        "source": "rohitgandikota/unified-concept-editing train-scripts/train_erase.py (35e91e2)",
        "anchors": dict(zip(names, guides, strict=True)),
        "preserve": len(kept) - 1,
        "preserve_scale": scale,
        "rows": {"erase": erase_rows, "preserve": keep_rows},
        "seconds": {"encode": t1 - t0, "solve": t2 - t1, "total": t2 - t0},
    }
    return peer_patch(base, "uce", names, deltas, config, extra)


def _erase_sums(
    text: Any, pairs: Sequence[tuple[str, str]], dim: int, size: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """sum c c^T and sum t c^T (dim, dim) over the aligned rows from each prompt's and guide's last token on."""
    cc = torch.zeros(dim, dim, dtype=torch.float64)
    tc = torch.zeros(dim, dim, dtype=torch.float64)
    rows = 0
    for chunk in batches(pairs, size):
        prompts, guides = [p for p, _ in chunk], [g for _, g in chunk]
        states = text.encode(prompts, text.max_length).double()  # (B, L, dim)
        guided = text.encode(guides, text.max_length).double()  # (B, L, dim)
        length = states.shape[1]
        for i, (ids, gids) in enumerate(zip(text.ids(prompts), text.ids(guides), strict=True)):
            e, g = last_token(ids), last_token(gids)
            n = length - max(e, g)
            c, t = states[i, e : e + n], guided[i, g : g + n]  # (n, dim) each
            cc += c.T @ c
            tc += t.T @ c
            rows += n
    return cc, tc, rows
