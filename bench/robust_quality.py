"""Robust forgetting on the toy world: Concept Inversion against the plain patch, `--robust` patches and the FMN
baseline, side by side in one run.

    python bench/robust_quality.py                        # circle; plain, robust 4 rounds, FMN baseline
    python bench/robust_quality.py --concept bob --rounds 4 6

For each model: Acc_erased and Acc_kept ratio on the bench prompts, and the share of images the judge calls the
concept when the attacker's learned token replaces its name (Concept Inversion, the harness's default budget:
`fmn_patch.attacks.InversionAttackConfig`), learned on the base's own images of the concept. Writes
bench/results/robust.json and regenerates BENCHMARKS.md.
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

from run import save, write_markdown

from fmn_patch import apply_patches, load_base, remove_patches
from fmn_patch.attacks import InversionAttackConfig, inversion_attack, reference_latents
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.mscore import SamplerConfig, acc_kept, evaluate
from fmn_patch.methods.baseline import train_fmn_baseline
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge


def measure(pipe: Any, label: str, concept: str, world: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Score ``pipe`` as it is now (patched or trained in place): bench accuracy, then the inversion attack."""
    bench, judge, sampler, base = world["bench"], world["judge"], world["sampler"], world["base"]
    score = evaluate(pipe, bench, judge, sampler, erased=[concept], progress=False)
    attack, _ = inversion_attack(
        pipe, bench.concept(concept), bench, judge, world["latents"], world["attack"], sampler, seed=0
    )
    kept_base = acc_kept(base.concepts, [concept])
    row = {
        "label": label,
        "acc_erased": score.concepts[concept].acc,
        "kept_ratio": (score.acc_kept or 0.0) / kept_base if kept_base else None,
        "inversion_acc": attack.acc,
        "inversion_m_score": attack.m_score,
        "seconds": round(seconds, 1),
    }
    print(row, file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--rounds", type=int, nargs="+", default=[4], help="--robust rounds to try")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps, help="training steps per concept")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    pipe, bench, judge = load_base("toy"), load_bench("toy"), ToyJudge.load()
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=tuple(range(args.seeds)))
    attack = InversionAttackConfig()
    latents = reference_latents(
        pipe, bench.concept(args.concept), bench, attack.images, steps=20, guidance=5.0
    )
    world = {
        "bench": bench,
        "judge": judge,
        "sampler": sampler,
        "attack": attack,
        "latents": latents,
        "base": evaluate(pipe, bench, judge, sampler, progress=False),
    }
    rows = [measure(pipe, "base (no patch)", args.concept, world, 0.0)]
    configs = {"plain patch": TrainConfig(steps=args.steps)}
    configs |= {f"--robust {r}": TrainConfig(steps=args.steps, robust_rounds=r) for r in args.rounds}
    for label, config in configs.items():
        started = time.perf_counter()
        patch = train_patch(pipe, [args.concept], config, progress=False)
        seconds = time.perf_counter() - started
        names = apply_patches(pipe, [patch])
        try:
            rows.append(measure(pipe, label, args.concept, world, seconds))
        finally:
            remove_patches(pipe, names)
    if not args.no_baseline:
        fmn = load_base("toy")
        report = train_fmn_baseline(
            fmn, [(args.concept, bench.concept(args.concept).category)], progress=False
        )
        rows.append(measure(fmn, "FMN baseline (whole UNet)", args.concept, world, report.seconds))
    save(
        "robust",
        {
            "concept": args.concept,
            # bench None in the config: the base's (toy)
            "train_config": {**dataclasses.asdict(TrainConfig(steps=args.steps)), "bench": bench.name},
            "attack": dataclasses.asdict(attack),
            "sampler": {"steps": sampler.steps, "guidance": sampler.guidance, "seeds": list(sampler.seeds)},
            "rows": rows,
        },
    )
    write_markdown()


if __name__ == "__main__":
    main()
