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

from run import percent

import fmn_patch.methods.edit as edit_module
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.mscore import SamplerConfig, evaluate
from fmn_patch.evaluation.provenance import provenance
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import apply_patches, remove_patches
from fmn_patch.files import atomic_write
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


ROWS = [
    Row("edit", "circle", 1.0, 1.0),  # the defaults before the neighbour weight
    Row("edit", "circle", 1.0, 10.0),
    Row("edit", "circle", 10.0, 10.0),  # today's defaults
    Row("edit", "bob", 10.0, 10.0),
    Row("edit", "bob", 30.0, 10.0),
    Row("train", "circle", 1.0, 1.0, 1.0),  # before
    Row("train", "circle", 10.0, 10.0, 10.0),  # today's defaults
    Row("train", "bob", 10.0, 10.0, 10.0),
]


def patch_of(pipe: Any, row: Row) -> Any:
    config = {"erase_weight": row.erase_weight, "neighbour_weight": row.edit_neighbours}
    if row.method == "edit":
        return edit_patch(pipe, [row.concept], config=EditConfig(**config))
    real = edit_module.EditConfig
    edit_module.EditConfig = functools.partial(real, **config)  # type: ignore[misc]  # the start's edit
    try:
        return train_patch(
            pipe, [row.concept], TrainConfig(neighbour_weight=row.train_neighbours), progress=False
        )
    finally:
        edit_module.EditConfig = real  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="*", help="indices into ROWS (default: all)")
    parser.add_argument("--threads", type=int, default=1)
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
    every = list(dict.fromkeys([*plain, *(n for ns in near.values() for n in ns)]))
    base = evaluate(pipe, bench, judge, sampler, concepts=every)  # once: each row reads its own concepts
    out = []
    for row in rows:
        started = time.perf_counter()
        patch = patch_of(pipe, row)
        seconds = time.perf_counter() - started
        names = apply_patches(pipe, [patch])
        try:
            patched = evaluate(pipe, bench, judge, sampler, concepts=plain + near.get(row.concept, []))
        finally:
            remove_patches(pipe, names)
        kept = [n for n in plain + near.get(row.concept, []) if n != row.concept]
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
    record = {"meta": provenance(), "sampler": {"steps": 20, "guidance": 5.0, "seeds": [0, 1]}, "rows": out}
    atomic_write(RESULTS, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"), overwrite=True)


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
        "of their base accuracy. DDIM 20 steps, guidance 5, seeds 0 and 1 (one image is 6.25 points of a concept).",
        "",
        "| method | concept | erase w | neighbour w (edit / train) | erased | alias | kept / base | below 90% | "
        "time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        weights = f"{r['edit_neighbours']:g}" + (
            f" / {r['train_neighbours']:g}" if r["method"] == "train" else ""
        )
        below = ", ".join(f"{n} {a:.0%}" for n, a in r["below_90"].items()) or "none"
        lines.append(
            f"| {r['method']} | {r['concept']} | {r['erase_weight']:g} | {weights} | {percent(r['acc_erased'])} | "
            f"{percent(r['alias'])} | {percent(r['kept_ratio'])} | {below} | {r['seconds']:.1f} s |"
        )
    return [*lines, "", "- " + provenance(record), ""]


if __name__ == "__main__":
    main()
