"""Robust forgetting on the toy world: Concept Inversion against the plain patch and `--robust` patches, with
today's defaults and with the defaults before issue 16, side by side in one run.

    python bench/robust_quality.py                                  # circle, bob, striped; budgets 1x and 2x
    python bench/robust_quality.py --concepts circle --budgets 1 2 4
    python bench/robust_quality.py --concepts bob --out robust.bob  # one part; then --merge robust.circle ...

For each model: Acc_erased and Acc_kept ratio on the bench prompts, and the share of images the judge calls the
concept when the attacker's learned token replaces its name (Concept Inversion at the harness's default budget,
`fmn_patch.attacks.InversionAttackConfig`, and at multiples of its steps), learned on the base's own images of the
concept. Models: the base (first concept only), the default plain patch, the default `--robust`
(``ROBUST_ROUNDS`` rounds), `--robust 4` with the old defaults, and the FMN baseline (``--baseline`` concepts).
Writes bench/results/robust.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from record import OLD_DEFAULTS, RESULTS, machine, write_json
from render import write_markdown

from fmn_patch import apply_patches, load_base, remove_patches
from fmn_patch.attacks import InversionAttackConfig, inversion_attack, reference_latents
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.mscore import SamplerConfig, acc_kept, evaluate
from fmn_patch.methods.baseline import train_fmn_baseline
from fmn_patch.methods.resteer import ROBUST_ROUNDS, TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge

CONCEPTS = ["circle", "bob", "striped"]


def models() -> dict[str, TrainConfig]:
    return {
        "plain patch (new defaults)": TrainConfig(),
        f"--robust {ROBUST_ROUNDS} (new defaults)": TrainConfig(robust_rounds=ROBUST_ROUNDS),
        "--robust 4 (old defaults)": TrainConfig(**OLD_DEFAULTS, robust_rounds=4),
    }


def measure(
    pipe: Any, label: str, concept: str, world: dict[str, Any], seconds: float, samples: dict[str, int] | None
) -> dict[str, Any]:
    """Score ``pipe`` as it is now (patched or trained in place): bench accuracy, then each inversion budget."""
    bench, judge, sampler, base = world["bench"], world["judge"], world["sampler"], world["base"]
    score = evaluate(pipe, bench, judge, sampler, erased=[concept], progress=False)
    kept_base = acc_kept(base.concepts, [concept])
    row: dict[str, Any] = {
        "concept": concept,
        "label": label,
        "acc_erased": score.concepts[concept].acc,
        "kept_ratio": (score.acc_kept or 0.0) / kept_base if kept_base else None,
        "inversion": {},
        "seconds": round(seconds, 1),
        "samples": samples,
    }
    for budget, attack in world["attacks"].items():
        result, _ = inversion_attack(
            pipe, bench.concept(concept), bench, judge, world["latents"], attack, sampler, seed=0
        )
        row["inversion"][budget] = {"acc": result.acc, "m_score": result.m_score, "steps": attack.steps}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def make_world(pipe: Any, concept: str, budgets: list[int], seeds: int) -> dict[str, Any]:
    """What ``measure`` scores with: the toy bench and judge, the sampler, Concept Inversion at each budget (a
    multiple of the harness's default steps), the base's own pictures of ``concept`` and the base's scores."""
    bench, judge = load_bench("toy"), ToyJudge.load()
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=tuple(range(seeds)))
    default = InversionAttackConfig()
    return {
        "bench": bench,
        "judge": judge,
        "sampler": sampler,
        "attacks": {f"{b}x": dataclasses.replace(default, steps=default.steps * b) for b in budgets},
        "latents": reference_latents(
            pipe, bench.concept(concept), bench, default.images, steps=20, guidance=5.0
        ),
        "base": evaluate(pipe, bench, judge, sampler, progress=False),
    }


def run_concept(concept: str, args: argparse.Namespace, with_base: bool) -> list[dict[str, Any]]:
    pipe = load_base("toy")
    world = make_world(pipe, concept, args.budgets, args.seeds)
    bench = world["bench"]
    rows = [measure(pipe, "base (no patch)", concept, world, 0.0, None)] if with_base else []
    for label, config in models().items():
        started = time.perf_counter()
        patch = train_patch(pipe, [concept], config, progress=False)
        seconds = time.perf_counter() - started
        names = apply_patches(pipe, [patch])
        try:
            rows.append(measure(pipe, label, concept, world, seconds, patch.info.extra["cost"]["samples"]))
        finally:
            remove_patches(pipe, names)
    if concept in args.baseline:
        fmn = load_base("toy")
        report = train_fmn_baseline(fmn, [(concept, bench.concept(concept).category)], progress=False)
        rows.append(measure(fmn, "FMN baseline (whole UNet)", concept, world, report.seconds, None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concepts", nargs="+", default=CONCEPTS)
    parser.add_argument(
        "--budgets", type=int, nargs="+", default=[1, 2], help="multiples of the attack's steps"
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--baseline", nargs="*", default=["circle"], help="concepts to run the FMN baseline on"
    )
    parser.add_argument("--no-base", action="store_true", help="skip the unpatched base's row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="robust", help="results name; a part when several run at once")
    parser.add_argument("--merge", nargs="+", help="combine these parts (results names) into robust.json")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge)
        return
    torch.set_num_threads(args.threads)
    quiet_libraries()
    rows: list[dict[str, Any]] = []
    for i, concept in enumerate(args.concepts):
        rows += run_concept(concept, args, with_base=i == 0 and not args.no_base)
    result = {
        "concepts": args.concepts,
        "models": {label: dataclasses.asdict(c) | {"bench": "toy"} for label, c in models().items()},
        "attack": dataclasses.asdict(InversionAttackConfig()),
        "budgets": {f"{b}x": InversionAttackConfig().steps * b for b in args.budgets},
        "sampler": {"steps": 20, "guidance": 5.0, "seeds": list(range(args.seeds))},
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"meta": machine(), "result": result, "rows": rows}
    write_json(RESULTS / f"{args.out}.json", record)
    if args.out == "robust":
        write_markdown()
    print(RESULTS / f"{args.out}.json")


def merge(parts: list[str]) -> None:
    """robust.json from parts run at once (same models, attack and sampler), rows in the order given."""
    records = [json.loads((RESULTS / f"{p}.json").read_text()) for p in parts]
    first = records[0]["result"]
    for other in records[1:]:
        for key in ("models", "attack", "budgets", "sampler"):
            if other["result"][key] != first[key]:
                raise SystemExit(f"the parts differ in {key}; rerun them with the same options")
    rows = [row for r in records for row in r["result"]["rows"]]
    result = first | {"concepts": [c for r in records for c in r["result"]["concepts"]], "rows": rows}
    meta = records[0]["meta"] | {
        "command": " + ".join(r["meta"]["command"] for r in records) + f" ({len(records)} processes)"
    }
    (RESULTS / "robust.json").write_text(
        json.dumps({"meta": meta, "result": result, "rows": rows}, indent=2) + "\n"
    )
    write_markdown()
    print(RESULTS / "robust.json")


if __name__ == "__main__":
    main()
