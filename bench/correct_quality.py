"""Concept correction on the toy world: the uncoloured "circle" that the model draws red most of the time.

    python bench/correct_quality.py                 # default CorrectConfig
    python bench/correct_quality.py --steps 600     # overrides

Measures, before and after `correct_patch(pipe, "circle", ["red circle", "green circle", ...])`: the colour
distribution of the bare concept's images ("a circle", "a picture of a circle", "circle"; judged by the toy judge's
colour head) and its entropy relative to log2(4), how often each coloured prompt shows its colour, and Acc_kept over
every ConceptBench concept relative to the base. Writes bench/results/correct.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from record import save
from render import write_markdown

from fmn_patch import apply_patches, load_base, remove_patches
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.correction import score_correction
from fmn_patch.evaluation.mscore import SamplerConfig, evaluate
from fmn_patch.methods.correct import CorrectConfig, attribute_variants, correct_patch
from fmn_patch.toy.judge import ToyJudge


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--steps", type=int, default=CorrectConfig.steps)
    parser.add_argument("--images-per-prompt", type=int, default=CorrectConfig.images_per_prompt)
    parser.add_argument("--seeds", type=int, default=16, help="seeds per prompt for the colour counts")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    pipe, bench, judge = load_base("toy"), load_bench("toy"), ToyJudge.load()
    variants = attribute_variants(args.concept, "colour", bench.name)
    seeds = tuple(range(args.seeds))
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=(0, 1))
    before = score_correction(pipe, judge, args.concept, variants, seeds=seeds)
    base = evaluate(pipe, bench, judge, sampler, progress=False)
    config = CorrectConfig(steps=args.steps, images_per_prompt=args.images_per_prompt)
    started = time.perf_counter()
    patch = correct_patch(pipe, args.concept, variants, config, progress=False)
    seconds = time.perf_counter() - started
    names = apply_patches(pipe, [patch])
    try:
        after = score_correction(pipe, judge, args.concept, variants, seeds=seeds)
        score = evaluate(pipe, bench, judge, sampler, progress=False)
    finally:
        remove_patches(pipe, names)
    result = {
        "concept": args.concept,
        "variants": variants,
        # the config's bench None means the base's: recorded as the bench it resolved to (toy)
        "config": {**dataclasses.asdict(config), "bench": config.bench or pipe.bench},
        "seeds": len(seeds),
        "before": before.to_dict(),
        "after": after.to_dict(),
        "acc_kept_base": base.acc_kept,
        "acc_kept_after": score.acc_kept,
        "kept_ratio": (score.acc_kept or 0.0) / base.acc_kept if base.acc_kept else None,
        "seconds": round(seconds, 1),
    }
    print(result, file=sys.stderr)
    save("correct", result)
    write_markdown()


if __name__ == "__main__":
    main()
