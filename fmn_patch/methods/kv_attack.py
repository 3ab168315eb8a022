"""A cheap inner attack for the robust rounds: key/value inversion.

Concept Inversion learns a token whose prompts make the patched model draw the concept, through the whole denoiser.
The patch changes only the text-side keys and values, so the same question can be asked where the patch acts: find
a new token whose prompts, through the patched projections, give back the keys and values the base computes for the
concept's own prompts. Only the text encoder and the target projections run (one prompt per step), no denoiser:
a step costs a small fraction of a denoiser pass, so the attack can take many steps. The token it finds joins the
erase set of the next round exactly as an inversion token does (``robust.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..concepts.prompts import ConceptPlan, substitute
from ..families.family import Conditioning, frozen
from .inversion import LearnedTokens
from .loop import LoopConfig, optimise
from .lora import LoraSession


def kv_inversion(
    session: LoraSession,
    plan: ConceptPlan,
    reference: Conditioning,
    token: str,
    init_words: str,
    *,
    steps: int,
    lr: float,
    seed: int,
) -> LearnedTokens:
    """A token (as many vectors as the concept's name has tokens, so positions line up) whose versions of
    ``plan.prompts``, through the session's patched targets, match the base's keys/values of ``reference``: the
    concept's own prompts encoded by the base (P, T, D), position for position."""
    family = session.base.family
    count = max(1, len(family.token_ids(plan.concept.name)))
    names = [token] + [f"{token}_{i}" for i in range(1, count)]
    init_ids = list(family.token_ids(init_words)) or [family.tokenizer.eos_token_id]
    states = reference.states  # (P, T, D)
    with torch.no_grad():
        init = family.token_table()[init_ids].mean(0).repeat(count, 1)
        # each target's scale over all prompts, one target at a time; a step computes its prompt's own targets
        # rather than keeping every target's (P, T, out) for the whole attack
        scales = {
            n: m.get_base_layer()(states).float().square().mean().clamp_min(1e-12)
            for n, m in session.modules.items()
        }
    prompts = [substitute(p, plan.concept.name, " ".join(names)) for p in plan.prompts]
    # a sparse table gradient: only the rows the prompt used (a dense one is the whole vocabulary, 150 MB at CLIP-L)
    tokens = family.added_tokens(names, init, sparse=True)
    with frozen(family.denoiser, *family.text_encoders()), tokens as weight:
        first = weight.shape[0] - count
        # The optimiser steps float32 copies of the new rows: AdamW on a half-precision table divides the zero
        # moments of every untouched row by an eps that rounds to 0 (NaN). The table's gradient reaches them
        # through a hook; after each step the rows are written back in the table's dtype.
        vectors = weight.detach()[first:].float().clone().requires_grad_(True)

        def to_vectors(grad: torch.Tensor) -> None:
            rows = _new_rows(grad, first, count)
            vectors.grad = rows if vectors.grad is None else vectors.grad + rows

        hook = weight.register_hook(to_vectors)
        weight.requires_grad_(True)

        def step(gen: torch.Generator) -> dict[str, torch.Tensor]:
            i = int(torch.randint(len(prompts), (1,), generator=gen))
            with torch.enable_grad():
                mine = family.encode_with_grad([prompts[i]]).states  # (1, T, D)
                losses = [
                    F.mse_loss(m(mine).float(), _base_output(m, states[i : i + 1])) / scales[n]
                    for n, m in session.modules.items()
                ]
            return {"kv": torch.stack(losses).mean()}

        def write_rows() -> None:
            with torch.no_grad():
                weight[first:] = vectors.to(weight.dtype)
                weight.grad = None

        loop = LoopConfig(steps=steps, lr=lr, seed=seed, max_grad_norm=None, desc="kv-inversion")
        try:
            report = optimise([vectors], step, loop, after_step=write_rows, progress=False)
        finally:
            hook.remove()
            weight.requires_grad_(False)
        learned = weight[first:].detach().clone()
    return LearnedTokens(token, learned, report.losses)


@torch.no_grad()
def _base_output(module: torch.nn.Module, states: torch.Tensor) -> torch.Tensor:
    """What the unpatched projection gives for ``states`` (1, T, D): the attack's target, float32 (1, T, out)."""
    return module.get_base_layer()(states).float()  # type: ignore[operator]


def _new_rows(grad: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """The float32 gradient (count, d) of a table's last ``count`` rows (from row ``first``), dense or sparse."""
    if not grad.is_sparse:
        return grad[first:].float()
    grad = grad.coalesce()
    index, values = grad.indices()[0], grad.values()  # (k,), (k, d)
    new = index >= first
    rows = torch.zeros(count, grad.shape[1], dtype=torch.float32, device=grad.device)
    return rows.index_add_(0, index[new] - first, values[new].float())
