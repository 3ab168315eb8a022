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
from ..families.conditioning import Conditioning
from ..families.grads import frozen
from .inversion import LearnedTokens, learnable_rows
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
    count = max(1, len(family.text.token_ids(plan.concept.name)))
    names = [token] + [f"{token}_{i}" for i in range(1, count)]
    init_ids = list(family.text.token_ids(init_words)) or [family.text.end_id]
    states = reference.states  # (P, T, D)
    with torch.no_grad():
        init = family.text.token_table()[init_ids].mean(0).repeat(count, 1)
        # each target's scale over all prompts, one target at a time; a step computes its prompt's own targets
        # rather than keeping every target's (P, T, out) for the whole attack
        scales = {
            n: m.get_base_layer()(states).float().square().mean().clamp_min(1e-12)
            for n, m in session.modules.items()
        }
    prompts = [substitute(p, plan.concept.name, " ".join(names)) for p in plan.prompts]
    with (
        frozen(family.adapters.denoiser, *family.text.text_encoders()),
        learnable_rows(family, names, init) as (vectors, write),
    ):

        def step(gen: torch.Generator) -> dict[str, torch.Tensor]:
            i = int(torch.randint(len(prompts), (1,), generator=gen))
            with torch.enable_grad():
                mine = family.text.encode_with_grad([prompts[i]]).states  # (1, T, D)
                losses = [
                    F.mse_loss(m(mine).float(), _base_output(m, states[i : i + 1])) / scales[n]
                    for n, m in session.modules.items()
                ]
            return {"kv": torch.stack(losses).mean()}

        loop = LoopConfig(steps=steps, lr=lr, seed=seed, max_grad_norm=None, desc="key/value inversion")
        report = optimise([vectors], step, loop, after_step=write, progress=False)
        learned = vectors.detach().to(family.text.token_table().dtype).clone()
    return LearnedTokens(token, learned, report.losses)


@torch.no_grad()
def _base_output(module: torch.nn.Module, states: torch.Tensor) -> torch.Tensor:
    """What the unpatched projection gives for ``states`` (1, T, D): the attack's target, float32 (1, T, out)."""
    return module.get_base_layer()(states).float()  # type: ignore[operator]
