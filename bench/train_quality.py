"""Forgetting quality on the toy world: our re-steering patch vs the faithful FMN baseline, side by side in one run.

    python bench/train_quality.py            # every toy concept one at a time, five at once, and the baseline
    python bench/train_quality.py --quick    # three concepts (one per category) and five at once

For each method and concept: Acc_erased (share of the concept's images the judge still calls the concept), alias
Acc_erased, Acc_kept (mean acc over the other concepts) and its ratio to the base model's over the same set, M-Score
before/after, wall time and patch size. Writes bench/results/train_quality.json (+ a grid PNG) and regenerates
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from run import RESULTS, machine, write_markdown

from fmn_patch import apply_patches, load_base, remove_patches
from fmn_patch.baseline import FMNConfig, train_fmn_baseline
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.conceptbench import load_bench
from fmn_patch.judge import ToyJudge
from fmn_patch.mscore import ModelScore, SamplerConfig, acc_kept, evaluate
from fmn_patch.train import TrainConfig, train_patch

FIVE = ["circle", "square", "bob", "striped", "star"]
QUICK = ["circle", "bob", "striped"]
# Ablations, run on QUICK: what each part of our objective buys.
ABLATIONS = {
    "keys-only (to_v frozen)": TrainConfig(train_values=False),
    "re-steering only (FMN loss, our LoRA)": TrainConfig(denoise_weight=0.0),
    "hybrid (init from edit)": TrainConfig(init="edit"),
}


def row(
    method: str, erased: list[str], score: ModelScore, base: ModelScore, seconds: float, size: int | None
) -> dict:
    kept_base = acc_kept(base.concepts, erased)
    kept = score.acc_kept
    return {
        "method": method,
        "erased": erased,
        "categories": [score.concepts[e].category for e in erased],
        "acc_erased": {e: score.concepts[e].acc for e in erased},
        "alias_acc_erased": {
            e: score.concepts[e].alias_acc for e in erased if score.concepts[e].alias_acc is not None
        },
        "m_score_before": {e: base.concepts[e].m_score for e in erased},
        "m_score_after": {e: score.concepts[e].m_score for e in erased},
        "acc_kept": kept,
        "base_acc_kept": kept_base,
        "kept_ratio": kept / kept_base if kept is not None and kept_base else None,
        "seconds": round(seconds, 2),
        "patch_bytes": size,
    }


def ours(
    pipe: Any,
    concepts: list[str],
    judge: ToyJudge,
    bench: Any,
    sampler: SamplerConfig,
    base: ModelScore,
    config: TrainConfig,
    label: str = "resteer",
) -> dict:
    started = time.perf_counter()
    patch = train_patch(pipe, concepts, config, progress=False)
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        size = patch.save(Path(tmp) / "p.safetensors").stat().st_size
    names = apply_patches(pipe, [patch])
    try:
        score = evaluate(pipe, bench, judge, sampler, erased=concepts, progress=False)
    finally:
        remove_patches(pipe, names)
    return row(label, concepts, score, base, seconds, size)


def baseline(
    concepts: list[str], judge: ToyJudge, bench: Any, sampler: SamplerConfig, base: ModelScore
) -> dict:
    pipe = load_base("toy")  # the baseline trains the whole UNet in place: a fresh copy each time
    pairs = [(c, bench.concept(c).category) for c in concepts]
    report = train_fmn_baseline(pipe, pairs, FMNConfig(), progress=False)
    score = evaluate(pipe, bench, judge, sampler, erased=concepts, progress=False)
    out = row("fmn-baseline", concepts, score, base, report.seconds, None)
    out["trainable_parameters"] = report.trainable_parameters
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--no-ablations", action="store_true", help="skip the keys-only/re-steering-only/hybrid rows"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    torch.manual_seed(0)
    bench = load_bench("toy")
    judge = ToyJudge.load()
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=tuple(range(args.seeds)))
    pipe = load_base("toy")
    base = evaluate(pipe, bench, judge, sampler, progress=False)
    singles = QUICK if args.quick else bench.names
    config = TrainConfig()
    rows = []
    for concept in singles:
        rows.append(ours(pipe, [concept], judge, bench, sampler, base, config))
        print(json.dumps(rows[-1]), file=sys.stderr)
        if not args.no_baseline:
            rows.append(baseline([concept], judge, bench, sampler, base))
            print(json.dumps(rows[-1]), file=sys.stderr)
    for label, variant in ({} if args.no_ablations else ABLATIONS).items():
        for concept in QUICK:
            rows.append(ours(pipe, [concept], judge, bench, sampler, base, variant, label))
            print(json.dumps(rows[-1]), file=sys.stderr)
    rows.append(ours(pipe, FIVE, judge, bench, sampler, base, config))
    if not args.no_baseline:
        rows.append(baseline(FIVE, judge, bench, sampler, base))
    result = {
        "sampler": {"steps": sampler.steps, "guidance": sampler.guidance, "seeds": list(sampler.seeds)},
        "train_config": config.__dict__ | {"preserve_extra": list(config.preserve_extra)},
        "base": {n: s.to_dict() for n, s in base.concepts.items()},
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_quality.json").write_text(
        json.dumps({"meta": machine(), "result": result}, indent=2) + "\n"
    )
    write_markdown()
    print(RESULTS / "train_quality.json")


if __name__ == "__main__":
    main()
