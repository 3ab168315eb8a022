"""Which parts of `--robust`'s recipe hold a concept against Concept Inversion on a toy? One patch per run.

    python bench/robust_ablation.py circle --start old --set '{"steps": 300, "robust_rounds": 4, "batch_size": 2}'
    python bench/robust_ablation.py bob --start new --set '{"robust_rounds": 4}'

--start old: the training defaults from before issue 16 (bench/record.py OLD_DEFAULTS: from zero, 150 x 8, no pool,
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

from record import OLD_DEFAULTS, RESULTS, machine, write_json
from render import write_markdown
from robust_quality import make_world, measure

from fmn_patch import apply_patches, load_base
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.errors import FmnPatchError
from fmn_patch.methods.resteer import TrainConfig, train_patch


def ablate(model: str, concept: str, start: str, changes: dict[str, Any]) -> dict[str, Any]:
    pipe = load_base(model)
    world = make_world(pipe, concept, [1, 2], seeds=2)
    config = config_of(start, changes)
    tick = time.perf_counter()
    patch = train_patch(pipe, [concept], config, progress=False)
    seconds = time.perf_counter() - tick
    apply_patches(pipe, [patch])
    scored = measure(pipe, json.dumps(changes), concept, world, seconds, patch.info.extra["cost"]["samples"])
    return {
        "model": model,
        "concept": concept,
        "start": start,
        "changes": changes,
        **scores(scored),
    }


def scores(scored: dict[str, Any]) -> dict[str, Any]:
    """A row's scores from ``measure``'s: Acc_erased, kept ratio, train time, samples, and per inversion budget the
    share of images called the concept and the M-Score."""
    return {
        "acc": scored["acc_erased"],
        "kept": scored["kept_ratio"],
        "train_s": scored["seconds"],
        "samples": scored["samples"],
        "ci": {b: [v["acc"], round(v["m_score"], 4)] for b, v in scored["inversion"].items()},
    }


def config_of(start: str, changes: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a row: ``changes`` over the old defaults or today's."""
    return TrainConfig(**{**(OLD_DEFAULTS if start == "old" else {}), **changes})


def changes_of(text: str) -> dict[str, Any]:
    """``--set``: a JSON object of TrainConfig fields."""
    try:
        changes = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not JSON ({e.msg}); e.g. '{{\"robust_rounds\": 4}}'"
        ) from None
    if not isinstance(changes, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object of TrainConfig fields")
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise argparse.ArgumentTypeError(f"not TrainConfig fields: {', '.join(unknown)}")
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("concept")
    parser.add_argument("--model", default="toy", choices=["toy", "toy-sd3"])
    parser.add_argument("--start", default="new", choices=["old", "new"])
    parser.add_argument(
        "--set", type=changes_of, default={}, help="TrainConfig fields over the start, as JSON"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.model == "toy-sd3":  # rows 7 and 18 of the table ran before the refusal
        parser.error("train_patch refuses --robust on toy-sd3 now; its variants run in bench/mmdit_robust.py")
    try:
        config_of(args.start, args.set)  # bad values fail here, before the base is loaded
    except FmnPatchError as e:
        parser.error(f"--set: {e}")
    torch.set_num_threads(args.threads)
    quiet_libraries()
    row = ablate(args.model, args.concept, args.start, args.set)
    print(json.dumps(row))
    path = RESULTS / "robust_ablation.json"
    record = json.loads(path.read_text()) if path.exists() else {"rows": []}
    meta = machine() | {"command": "python bench/robust_ablation.py " + shlex.join(sys.argv[1:])}
    record["rows"].append({"meta": meta, **row})
    write_json(path, record)
    write_markdown()


if __name__ == "__main__":
    main()
