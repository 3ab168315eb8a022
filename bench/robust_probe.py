"""What would make a patch hold against Concept Inversion on the toy? Two probes on one concept, in one run.

    python bench/robust_probe.py                       # circle
    python bench/robust_probe.py --concept bob --ks 0 32

1. Recipes: the default `--robust` and heavier adversarial rounds (Concept Inversion as the inner attack, more
   rounds and attack steps), each scored like bench/robust_quality.py (Acc_erased, Acc_kept ratio, Concept
   Inversion at the harness's default budget) with the denoiser samples it trained on.
2. Output-space removal: the default plain patch, then the k directions of each target's output (keys and values)
   that the concept's tokens use most relative to every other bench prompt (top-k generalised eigenvectors of the
   two second-moment matrices) projected out, W' <- (I - U U^T) W'. The result is still a LoRA (rank r + k):
   B' = [(I - U U^T) B, -U], A' = [A; U^T W]. If no direction the concept's own tokens use is needed to draw it,
   the attacker's token has to find others.

Writes bench/results/robust_probe.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from record import save
from render import write_markdown
from robust_quality import measure

from fmn_patch import load_base
from fmn_patch.attacks import InversionAttackConfig, reference_latents
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.mscore import SamplerConfig, evaluate
from fmn_patch.families.stack import apply_patches, remove_patches
from fmn_patch.format.patch import Patch
from fmn_patch.methods.dataset import concept_masks
from fmn_patch.methods.resteer import ROBUST_ROUNDS, TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge

HEAVY = {
    "robust_attack": "inversion",
    "robust_attack_steps": 100,
    "robust_attack_batch": 8,
    "robust_attack_lr": 5e-3,
}
#: The recipes as robust_probe.json measured them (the defaults before --robust trained from zero): from the edit,
#: the plain budget (15 x 4, pool 32) split into the rounds.
FROM_EDIT = {"init": "edit", "steps": 15, "batch_size": 4, "pool": 32}
KV = {"robust_attack": "kv", "robust_attack_steps": 25, "robust_attack_batch": 4, "robust_attack_lr": 1e-2}
RECIPES: dict[str, dict[str, Any]] = {
    "--robust 3 (then default: kv inversion, 25 steps)": {"robust_rounds": 3, **FROM_EDIT, **KV},
    "3 rounds, Concept Inversion 25 steps": {
        "robust_rounds": 3,
        **FROM_EDIT,
        **KV,
        "robust_attack": "inversion",
    },
    "3 rounds, Concept Inversion 100 steps x 8": {"robust_rounds": 3, **FROM_EDIT, **HEAVY},
    "6 rounds of 5 steps, Concept Inversion 100 steps x 8": {
        "robust_rounds": 6,
        **FROM_EDIT,
        "steps": 30,
        **HEAVY,
    },
    f"--robust {ROBUST_ROUNDS} (default now: from zero, 300 x 2, Concept Inversion 100 x 2)": {
        "robust_rounds": ROBUST_ROUNDS
    },
}


def removed(
    base: Any, patch: Patch, concept_states: torch.Tensor, other_states: torch.Tensor, k: int
) -> Patch:
    """``patch`` with the top-``k`` concept directions of every target's output projected out (rank r + k)."""
    factors = {}
    for name, (a, b) in patch.factors.items():
        w = base.family.adapters.targets()[name].weight.detach().float()  # (out, in)
        yc, yo = concept_states @ w.T, other_states @ w.T  # (Nc, out), (No, out)
        sc, so = yc.T @ yc / len(yc), yo.T @ yo / len(yo)  # (out, out)
        so = so + 1e-3 * so.trace() / len(so) * torch.eye(len(so))
        inv = torch.linalg.inv(torch.linalg.cholesky(so))  # so = L L^T
        _, vectors = torch.linalg.eigh(inv @ sc @ inv.T)
        u, _ = torch.linalg.qr(inv.T @ vectors[:, -k:])  # (out, k) orthonormal
        factors[name] = (
            torch.cat([a.float(), u.T @ w]).contiguous(),
            torch.cat([(torch.eye(len(u)) - u @ u.T) @ b.float(), -u], 1).contiguous(),
        )
    return Patch(factors, patch.info, patch.component)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 16, 48, 56, 64], help="directions removed")
    parser.add_argument("--no-recipes", action="store_true")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    pipe, bench, judge = load_base("toy"), load_bench("toy"), ToyJudge.load()
    base, concept = pipe, args.concept
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=tuple(range(args.seeds)))
    attack = InversionAttackConfig()
    latents = reference_latents(pipe, bench.concept(concept), bench, attack.images, steps=20, guidance=5.0)
    world = {
        "bench": bench,
        "judge": judge,
        "sampler": sampler,
        "attacks": {"1x": attack},
        "latents": latents,
    }
    world["base"] = evaluate(pipe, bench, judge, sampler, progress=False)
    rows: list[dict[str, Any]] = []

    def scored(label: str, patch: Patch, seconds: float, part: str) -> None:
        names = apply_patches(pipe, [patch])
        try:
            row = measure(pipe, label, concept, world, seconds, patch.info.extra["cost"]["samples"])
        finally:
            remove_patches(pipe, names)
        rows.append(row | {"part": part, "rank": patch.rank})

    for label, changes in {} if args.no_recipes else RECIPES.items():
        started = time.perf_counter()
        patch = train_patch(pipe, [concept], TrainConfig(**changes), progress=False)
        scored(label, patch, time.perf_counter() - started, "recipe")
    started = time.perf_counter()
    plain = train_patch(pipe, [concept], TrainConfig(), progress=False)
    seconds = time.perf_counter() - started
    prompts = bench.prompts(bench.concept(concept))
    states = base.family.text.encode(prompts).states.float()  # (P, T, D)
    at = concept_masks(base, prompts, [concept] * len(prompts), True).bool()  # the name and what follows
    others = [p for c in bench.concepts if c.name != concept for p in bench.prompts(c)]
    other = base.family.text.encode(others).states.float().flatten(0, 1)  # (P' T, D)
    for k in args.ks:
        patch = removed(base, plain, states[at], other, k) if k else plain
        scored(f"default patch, {k} of {states.shape[-1]} directions removed", patch, seconds, "removal")
    save(
        "robust_probe",
        {
            "concept": concept,
            "recipes": {label: dataclasses.asdict(TrainConfig(**c)) for label, c in RECIPES.items()},
            "attack": dataclasses.asdict(attack),
            "sampler": {"steps": 20, "guidance": 5.0, "seeds": list(range(args.seeds))},
            "rows": rows,
        },
    )
    write_markdown()


if __name__ == "__main__":
    main()
