"""Which parts of `--robust`'s recipe hold a concept against Concept Inversion on a toy? One patch per run.

    python bench/robust_ablation.py circle --start old --set '{"steps": 300, "robust_rounds": 4, "batch_size": 2}'
    python bench/robust_ablation.py bob --start new --set '{"robust_rounds": 4}'
    python bench/robust_ablation.py circle --model toy-sd3 --start new --set '{"steps": 300, "robust_rounds": 4}'

--start old: the training defaults from before issue 16 (bench/run.py OLD_DEFAULTS: from zero, 150 x 8, no pool,
Concept Inversion of 100 x 8 between rounds); new: today's TrainConfig defaults. --set: TrainConfig fields (JSON)
over the start. Scores the patch like bench/robust_quality.py: Acc_erased and Acc_kept ratio on the bench prompts,
and Concept Inversion (the harness's default budget, from the anchor) at 1x and 2x its steps. Appends the row, with
its command and machine, to bench/results/robust_ablation.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from run import OLD_DEFAULTS, RESULTS, machine, write_markdown

from fmn_patch import apply_patches, load_base
from fmn_patch.attacks import InversionAttackConfig, inversion_attack, reference_latents
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.mscore import SamplerConfig, acc_kept, evaluate
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge


def ablate(model: str, concept: str, start: str, changes: dict[str, Any]) -> dict[str, Any]:
    pipe, bench, judge = load_base(model), load_bench("toy"), ToyJudge.load()
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=(0, 1))
    default = InversionAttackConfig()
    attacks = {"1x": default, "2x": dataclasses.replace(default, steps=2 * default.steps)}
    latents = reference_latents(pipe, bench.concept(concept), bench, default.images, steps=20, guidance=5.0)
    base = evaluate(pipe, bench, judge, sampler, progress=False)
    config = TrainConfig(**{**(OLD_DEFAULTS if start == "old" else {}), **changes})
    tick = time.perf_counter()
    patch = train_patch(pipe, [concept], config, progress=False)
    seconds = time.perf_counter() - tick
    apply_patches(pipe, [patch])
    score = evaluate(pipe, bench, judge, sampler, erased=[concept], progress=False)
    row: dict[str, Any] = {
        "model": model,
        "concept": concept,
        "start": start,
        "changes": changes,
        "acc": score.concepts[concept].acc,
        "kept": (score.acc_kept or 0.0) / acc_kept(base.concepts, [concept]),
        "train_s": round(seconds, 1),
        "samples": patch.info.extra["cost"]["samples"],
        "ci": {},
    }
    for budget, attack in attacks.items():
        result, _ = inversion_attack(
            pipe, bench.concept(concept), bench, judge, latents, attack, sampler, seed=0
        )
        row["ci"][budget] = [result.acc, round(result.m_score, 4)]  # share called the concept, M-Score
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("concept")
    parser.add_argument("--model", default="toy", choices=["toy", "toy-sd3"])
    parser.add_argument("--start", default="new", choices=["old", "new"])
    parser.add_argument("--set", default="{}", help="TrainConfig fields over the start, as JSON")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    row = ablate(args.model, args.concept, args.start, json.loads(args.set))
    print(json.dumps(row))
    path = RESULTS / "robust_ablation.json"
    record = json.loads(path.read_text()) if path.exists() else {"rows": []}
    meta = machine() | {"command": "python bench/robust_ablation.py " + shlex.join(sys.argv[1:])}
    record["rows"].append({"meta": meta, **row})
    path.write_text(json.dumps(record, indent=2) + "\n")
    write_markdown()


if __name__ == "__main__":
    main()
