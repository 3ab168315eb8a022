"""Why the edit weights an erased concept's neighbours (``EditConfig.neighbour_weight``, ``erase_weight``) and training
keeps them weighted (``TrainConfig.neighbour_weight``): one patch per row on the bundled toy model, scored by the toy
judge on every object and style, bob and alice, and the erased identity's neighbours (one attribute apart).

    python bench/neighbour_weight.py                # every row below, writes bench/results/neighbour_weight.json
    python bench/neighbour_weight.py --rows 0 2     # some of them

A row names the method, the concept and the edit's weights; a train row starts from that edit (the edit's own
config, set here through ``EditConfig``'s defaults) and trains with the given ``neighbour_weight``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from record import percent, write_json

import fmn_patch.methods.edit as edit_module
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.mscore import SamplerConfig, evaluate
from fmn_patch.evaluation.provenance import provenance
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import apply_patches, remove_patches
from fmn_patch.methods.edit import EditConfig, edit_patch
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge
from fmn_patch.toy.world import IDENTITIES, neighbours

RESULTS = Path(__file__).parent / "results" / "neighbour_weight.json"


@dataclasses.dataclass(frozen=True)
class Row:
    method: str  # edit or train
    concept: str
    erase_weight: float  # the edit's (for train: the edit it starts from)
    edit_neighbours: float
    train_neighbours: float = 1.0  # train rows only
    eta: float | None = None  # train rows only: the negative guidance (None: the category's, resteer.eta_of)
    preserve_padding: bool = True  # train rows only: TrainConfig.preserve_padding
    push: float = 1.5  # the edit's (EditConfig.push: how far past the anchor, away from the concept)


ROWS = [
    Row("edit", "circle", 1.0, 1.0),  # the defaults before the neighbour weight
    Row("edit", "circle", 1.0, 10.0),
    Row("edit", "circle", 10.0, 10.0),  # today's defaults
    Row("edit", "bob", 10.0, 10.0),
    Row("edit", "bob", 30.0, 10.0),
    Row("train", "circle", 1.0, 1.0, 1.0),  # before
    Row("train", "circle", 10.0, 10.0, 10.0),  # today's defaults
    Row("train", "bob", 10.0, 10.0, 10.0),  # today's defaults
    Row("train", "bob", 10.0, 10.0, 10.0, 0.25),  # a gentler push away from bob's look
    Row("train", "bob", 10.0, 10.0, 10.0, None, False),  # preservation from BOS to EOS, as the edit's
    Row("train", "alice", 10.0, 10.0, 10.0),
    Row("train", "alice", 10.0, 10.0, 10.0, None, False),
    Row("train", "circle", 10.0, 10.0, 10.0, None, False),
    Row("train", "striped", 10.0, 10.0, 10.0, None, False),
    # the edit of bob along its trade-off: its neighbour zokan reads like it to the 64-wide text encoder
    Row("edit", "bob", 10.0, 10.0, push=3.0),
    Row("edit", "bob", 20.0, 10.0),
    Row("edit", "bob", 10.0, 30.0, push=3.0),
    Row("edit", "bob", 10.0, 100.0, push=3.0),
]


def patch_of(pipe: Any, row: Row) -> Any:
    config: dict[str, Any] = {
        "erase_weight": row.erase_weight,
        "neighbour_weight": row.edit_neighbours,
        "push": row.push,
    }
    if row.method == "edit":
        return edit_patch(pipe, [row.concept], config=EditConfig(**config))
    real = edit_module.EditConfig
    edit_module.EditConfig = functools.partial(real, **config)  # type: ignore[misc,assignment]  # the start's edit
    try:
        trained = TrainConfig(
            neighbour_weight=row.train_neighbours, eta=row.eta, preserve_padding=row.preserve_padding
        )
        return train_patch(pipe, [row.concept], trained, progress=False)
    finally:
        edit_module.EditConfig = real  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="*", help="indices into ROWS (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--add", action="store_true", help="keep the results file's rows (and its run's record) and add these"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    pipe, bench, judge = load_base("toy"), load_bench("toy"), ToyJudge.load()
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=(0, 1))
    plain = [c.name for c in bench.concepts if c.category != "identity"] + ["bob", "alice"]
    rows = [ROWS[i] for i in (args.rows if args.rows is not None else range(len(ROWS)))]
    near = {
        r.concept: [n for n in neighbours(r.concept) if n not in plain]
        for r in rows
        if r.concept in IDENTITIES
    }
    scored = {r.concept: list(dict.fromkeys([*plain, r.concept, *near.get(r.concept, [])])) for r in rows}
    every = list(dict.fromkeys(n for names in scored.values() for n in names))
    base = evaluate(pipe, bench, judge, sampler, concepts=every)  # once: each row reads its own concepts
    out = []
    for row in rows:
        started = time.perf_counter()
        patch = patch_of(pipe, row)
        seconds = time.perf_counter() - started
        names = apply_patches(pipe, [patch])
        try:
            patched = evaluate(pipe, bench, judge, sampler, concepts=scored[row.concept])
        finally:
            remove_patches(pipe, names)
        kept = [n for n in scored[row.concept] if n != row.concept]
        acc = {n: patched.concepts[n].acc for n in kept}
        result = {
            **dataclasses.asdict(row),
            "seconds": round(seconds, 2),
            "acc_erased": patched.concepts[row.concept].acc,
            "alias": patched.concepts[row.concept].alias_acc,
            "kept_ratio": sum(acc.values()) / sum(base.concepts[n].acc for n in kept),
            "neighbours": {n: acc[n] for n in near.get(row.concept, [])},
            "below_90": {n: a for n, a in acc.items() if a < 0.9 * base.concepts[n].acc},
        }
        print(json.dumps(result), flush=True)
        out.append(result)
    sampled = {"steps": 20, "guidance": 5.0, "seeds": [0, 1]}
    record: dict[str, Any] = {"meta": provenance(), "sampler": sampled, "rows": out}
    if args.add and RESULTS.exists():  # each run's rows keep their own provenance
        before = json.loads(RESULTS.read_text())
        runs = before.get("runs") or [{"meta": before["meta"], "rows": before["rows"]}]
        record["runs"] = [*runs, {"meta": record["meta"], "rows": out}]
        record["rows"] = [r for run in record["runs"] for r in run["rows"]]
    write_json(RESULTS, record)


def neighbour_section(read: Callable[[str], Any], provenance: Callable[[Any], str]) -> list[str]:
    """BENCHMARKS.md's section: one row per patch."""
    record = read("neighbour_weight")
    if not record:
        return []

    lines = [
        "## Neighbour weight: keeping what reads like the erased concept (`bench/neighbour_weight.py`)",
        "",
        "One patch per row on the v2 toy. Erase and neighbour weights are the edit's (a train row starts from that "
        "edit and weights the neighbours' preservation rows by its own factor). Kept: every object and style, bob, "
        "alice and the erased identity's neighbours, as a ratio to the base; below 90%: the kept concepts under 90% "
        "of their base accuracy. DDIM 20 steps, guidance 5, seeds 0 and 1 (one image is 6.25 points of a concept). "
        "eta: the train row's negative guidance (default: 2 for objects and identities, 1 for styles); no padding "
        "kept: `TrainConfig(preserve_padding=False)`, the preservation term reads each prompt from BOS to EOS, as "
        "the edit does; push: the edit's `EditConfig.push` (for a train row, its start's). Rows marked (k) come "
        "from the k-th run, each with the code of its time (provenance below).",
        "",
        "| method | concept | erase w | neighbour w (edit / train) | push | eta | erased | alias | kept / base | "
        "below 90% | time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = record.get("runs") or [record]
    for k, run in enumerate(runs, 1):
        lines += _rows(run["rows"], f" ({k})" if len(runs) > 1 else "")
    notes = [f"- ({k}) " + provenance(run) for k, run in enumerate(runs, 1)] if len(runs) > 1 else []
    return [*lines, "", *(notes or ["- " + provenance(record)]), ""]


def _rows(rows: list[dict[str, Any]], run: str) -> list[str]:
    lines = []
    for r in rows:
        weights = f"{r['edit_neighbours']:g}" + (
            f" / {r['train_neighbours']:g}" if r["method"] == "train" else ""
        )
        below = ", ".join(f"{n} {a:.0%}" for n, a in r["below_90"].items()) or "none"
        eta = "-" if r["method"] == "edit" else "default" if r.get("eta") is None else f"{r['eta']:g}"
        if not r.get("preserve_padding", True):
            eta += ", no padding kept"
        lines.append(
            f"| {r['method']}{run} | {r['concept']} | {r['erase_weight']:g} | {weights} | {r.get('push', 1.5):g} | "
            f"{eta} | "
            f"{percent(r['acc_erased'])} | "
            f"{percent(r['alias'])} | {percent(r['kept_ratio'])} | {below} | {r['seconds']:.1f} s |"
        )
    return lines


if __name__ == "__main__":
    main()
