"""Which levers make a toy-sd3 patch (trained from zero: no closed-form start) forget: one variant per run.

    python bench/toy_sd3_levers.py --tag pool256 --set steps=150 batch_size=8 pool=256
    python bench/toy_sd3_levers.py --tag padding --padding --set steps=150 batch_size=8
    python bench/toy_sd3_levers.py --tag five --concepts circle square bob striped star --set steps=150 batch_size=8

Each run trains one patch with `train_patch` and the given `TrainConfig` fields (Python literals), applies it, and
scores it on ConceptBench-toy (20 sampler steps, guidance 5, seeds 0-2; the base's scores are computed once and
cached in bench/results/toy_sd3_levers.base.json). ``--padding``: the re-steering mask also covers every part's
padding (`JointPlacement.positions(padding=True)`); ``--draws N``: N denoiser passes per preserve prompt when
recording the text stream for preservation (default `mmdit.PRESERVE_DRAWS`). One row per run is appended to
bench/results/toy_sd3_levers.json with its command, machine and git revision; BENCHMARKS.md is regenerated.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from record import RESULTS, machine, write_json
from render import write_markdown

import fmn_patch.families.mmdit as mmdit
import fmn_patch.methods.dataset as dataset
from fmn_patch import apply_patches, load_base, remove_patches
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.mscore import SamplerConfig, evaluate
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge


def literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def padded_masks(base: Any, prompts: Any, words: Any, after: bool) -> torch.Tensor:
    """``dataset.concept_masks`` with every part's padding marked too."""
    family = base.family
    masks = torch.zeros(len(prompts), family.text.max_length)
    for i, (prompt, word) in enumerate(zip(prompts, words, strict=True)):
        masks[i, list(family.text.place(prompt, word).positions(after=after, padding=True))] = 1.0
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concepts", nargs="+", default=["circle"])
    parser.add_argument("--tag", required=True)
    parser.add_argument("--set", nargs="*", default=[], help="TrainConfig fields, k=v (Python literals)")
    parser.add_argument("--padding", action="store_true")
    parser.add_argument("--draws", type=int, default=None)
    parser.add_argument("--model", default="toy-sd3")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    fields = {k: literal(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    config = TrainConfig(**fields)
    if args.padding:
        dataset.concept_masks = padded_masks  # type: ignore[assignment]
    if args.draws:
        mmdit.PRESERVE_DRAWS = args.draws  # type: ignore[misc]
    base = load_base(args.model)
    bench, judge = load_bench("toy"), ToyJudge.load()
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=(0, 1, 2))
    cache = RESULTS / f"toy_sd3_levers.base.{args.model}.json"
    if cache.exists():
        base_acc = json.loads(cache.read_text())
    else:
        score = evaluate(base, bench, judge, sampler, progress=False)
        base_acc = {n: c.acc for n, c in score.concepts.items()}
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_json(cache, base_acc)
    started = time.perf_counter()
    patch = train_patch(base, args.concepts, config, progress=False)
    train_s = time.perf_counter() - started
    names = apply_patches(base, [patch])
    try:
        score = evaluate(base, bench, judge, sampler, erased=args.concepts, progress=False)
    finally:
        remove_patches(base, names)
    others = [n for n in base_acc if n not in args.concepts]
    kept_base = sum(base_acc[n] for n in others) / len(others)
    row = {
        "tag": args.tag,
        "model": args.model,
        "concepts": args.concepts,
        "set": fields,
        "padding": args.padding,
        "draws": args.draws or mmdit.PRESERVE_DRAWS,
        "train_s": round(train_s, 1),
        "acc": {c: score.concepts[c].acc for c in args.concepts},
        "alias": {c: score.concepts[c].alias_acc for c in args.concepts},
        "kept_ratio": (score.acc_kept or 0.0) / kept_base,
        "kept": {n: score.concepts[n].acc for n in others},
        "loss_terms": patch.info.extra.get("loss_terms"),
        "meta": machine(),
    }
    print(json.dumps(row), flush=True)
    path = RESULTS / "toy_sd3_levers.json"
    record = json.loads(path.read_text()) if path.exists() else {"rows": []}
    record["rows"].append(row)
    write_json(path, record)
    write_markdown()


if __name__ == "__main__":
    main()
