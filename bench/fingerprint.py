"""Tensor fingerprints of every method on fixed seeds: the evidence that a refactor changed no number.

    python bench/fingerprint.py                 # every fingerprint, ~15 min on one idle core
    python bench/fingerprint.py --only edit     # the ones whose name starts with "edit"

Each entry is the SHA-256 tensor hash of a patch (or of the weights the FMN baseline trains) made on the toy model
or on the tiny SD-1.x/2.x/XL pipelines with fixed seeds, or a report (evaluation, attacks) with the timings
removed. Two revisions that give the same file compute the same patches and the same bench numbers. Writes
``bench/results/fingerprint.json``; ``--compare FILE`` lists the entries that differ from an earlier run.

The layout change (issue 13) was checked with this script's body run against the pre-layout commit 2d7e8f9 (its
import names) and after: every entry is equal except those whose default anchor changed on purpose, each of which
equals the old one when the old anchor is passed explicitly (``edit/bob-a-person``, ``edit/six``, ``tiny/*/edit``
with ``anchor=""``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from fmn_patch import (
    AttackConfig,
    CorrectConfig,
    EditConfig,
    FMNConfig,
    InversionAttackConfig,
    InversionConfig,
    SearchConfig,
    TrainConfig,
    correct_patch,
    edit_patch,
    evaluate_patches,
    load_base,
    load_bench,
    load_judge,
    merge_patches,
    run_attacks,
    to_kohya,
    train_fmn_baseline,
    train_patch,
    train_patch_with_inversion,
)
from fmn_patch.evaluation.mscore import SamplerConfig
from fmn_patch.evaluation.provenance import provenance
from fmn_patch.format.header import tensor_hash
from fmn_patch.methods.correct import attribute_variants
from fmn_patch.testing.tiny import build_sd

HERE = Path(__file__).parent


def fingerprints(want: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def rec(key: str, value: Any) -> None:
        out[key] = value
        print(key, str(value)[:80], file=sys.stderr, flush=True)

    toy = load_base("toy")
    bench = load_bench("toy")
    judge = load_judge(bench)
    for c in ("circle", "bob", "striped"):
        if want(f"train/{c}"):
            rec(f"train/{c}", train_patch(toy, [c], TrainConfig(), progress=False).tensor_hash())
    if want("train/hybrid"):
        rec(
            "train/hybrid",
            train_patch(toy, ["circle"], TrainConfig(steps=20, init="edit"), progress=False).tensor_hash(),
        )
    if want("train/robust"):
        config = TrainConfig(steps=20, robust_rounds=2, robust_attack_steps=10)
        rec("train/robust", train_patch(toy, ["circle"], config, progress=False).tensor_hash())
    if want("train/ti"):
        p, learned = train_patch_with_inversion(
            toy, ["circle"], TrainConfig(steps=10), InversionConfig(steps=10), progress=False
        )
        rec("train/ti", [p.tensor_hash(), tensor_hash({"e": learned[0].embeddings})])
    if want("train/five"):
        five = ["circle", "square", "bob", "striped", "star"]
        rec("train/five", train_patch(toy, five, TrainConfig(steps=10), progress=False).tensor_hash())
    edits = {c: edit_patch(toy, [c]) for c in ("circle", "bob", "striped")}
    for c, patch in edits.items():
        if want(f"edit/{c}"):
            rec(f"edit/{c}", patch.tensor_hash())
    if want("edit/six"):
        six = ["circle", "square", "triangle", "cross", "bob", "alice"]
        rec("edit/six", edit_patch(toy, six).tensor_hash())
    if want("correct"):
        variants = attribute_variants("circle", "colour", "toy")
        rec(
            "correct/circle",
            correct_patch(toy, "circle", variants, CorrectConfig(steps=30), progress=False).tensor_hash(),
        )
    if want("merge"):
        rec("merge/cat", merge_patches([edits["circle"], edits["bob"]], [1.0, 0.5])[0].tensor_hash())
        merged, report = merge_patches([edits["circle"], edits["bob"]], rank=4)
        rec("merge/svd", [merged.tensor_hash(), report.total])
    if want("kohya"):
        rec("kohya", tensor_hash(to_kohya(edits["circle"])[0]))
    if want("eval"):
        sampler = SamplerConfig(seeds=(0,))
        scored = evaluate_patches(toy, [edits["circle"]], bench, judge, sampler, progress=False, grid=False)
        rec("eval", json.loads(json.dumps(scored.to_dict())))
    if want("attack"):
        attack_config = AttackConfig(
            sampler=SamplerConfig(seeds=(0,)),
            inversion=InversionAttackConfig(steps=10, images=8),
            search=SearchConfig(
                seconds=7 * 24 * 3600, max_candidates=20, images=4
            ),  # the cap binds, not time
        )
        attacked = run_attacks(toy, [edits["circle"]], "circle", judge, bench, attack_config)
        data = {k: v for k, v in attacked.to_dict().items() if k not in ("seconds", "results")}
        rec("attack", json.loads(json.dumps({**data, "prompts": [r.prompts for r in attacked.results]})))
    if want("fmn"):
        trained = load_base("toy")
        train_fmn_baseline(trained, [("circle", "object")], FMNConfig(steps=5), progress=False)
        rec("fmn", tensor_hash({k: v.weight for k, v in trained.family.adapters.targets().items()}))
    if want("tiny"):
        root = Path(tempfile.mkdtemp())
        for kind in ("sd1", "sd2", "sdxl"):
            tiny = load_base(str(build_sd(kind, root)))
            config = TrainConfig(steps=3, batch_size=2, images_per_prompt=1, image_steps=2, bench="toy")
            rec(f"tiny/{kind}/train", train_patch(tiny, ["circle"], config, progress=False).tensor_hash())
            rec(
                f"tiny/{kind}/edit",
                edit_patch(tiny, ["circle"], config=EditConfig(bench="toy")).tensor_hash(),
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", default=[], help="name prefixes to compute (default: all)")
    parser.add_argument("--compare", type=Path, help="an earlier fingerprint.json to compare with")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fingerprint.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the fingerprints are for one thread: thread counts change float sums
    from fmn_patch.cli.options import quiet_libraries

    quiet_libraries()
    found = fingerprints(lambda key: not args.only or any(key.startswith(o) for o in args.only))
    from record import write_json  # bench/record.py (this script's folder is on sys.path)

    write_json(args.out, {"meta": provenance(), "fingerprints": found}, indent=1)
    if args.compare is not None:
        old = json.loads(args.compare.read_text())["fingerprints"]
        for key in sorted(found.keys() & old.keys()):
            same = json.dumps(found[key], sort_keys=True) == json.dumps(old[key], sort_keys=True)
            print(f"{'same' if same else 'DIFF'}  {key}")
    print(args.out)


if __name__ == "__main__":
    main()
