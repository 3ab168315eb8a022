"""Mass erasure on ConceptBench-toy v2: N identities erased by one patch, every method side by side in one run.

    python bench/mass_erasure.py                                  # N = 1, 5, 10, 25, 50; 3 draws; every method
    python bench/mass_erasure.py --sizes 1 5 --draws 1 --methods edit uce speed   # a part of it
    python bench/mass_erasure.py --pipeline out/toy-v2/pipeline --judge out/toy-v2/judge.safetensors  # not built in
    python bench/mass_erasure.py --resume                         # go on with a run that was stopped

For each N, `--draws` seeded random draws of N identities (the same draws for every method). Each method makes
one model that forgets the drawn names; the judge then scores, with the card's sampler:

- Acc_erased: how often the judge still sees each erased identity in its own prompts (mean and max over them),
  and in its alias prompts where it has an alias (only `bob` has one);
- Acc_kept, split: the erased identities' neighbours (one attribute apart, not erased themselves), `--others`
  other identities (drawn from the rest), every object and every style; each also as a ratio to the base's;
- H-score: the harmonic mean of (1 - Acc_erased) and Acc_kept, as MACE reports it (Acc_kept over every kept
  concept scored);
- patch size (bytes of the saved patch; FMN's baseline changes the whole UNet and has none) and wall time.

Methods: `edit` (closed form, `edit_patch`), `train` (re-steering, `train_patch`, defaults), `fmn` (the faithful
FMN baseline, whole UNet), `uce`, `speed` and `mace` (faithful re-implementations in bench/peers/; MACE's images and
masks are the toy world's renders, its prior the world's captions, the world the pipeline's training.json names).
Writes bench/results/mass_erasure.json after every run (`--resume` continues from it, keeping the base's scores and
the finished runs) and, when all are done, regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from mass_erasure_methods import REGISTRY, World, edit_variant
from mass_erasure_report import NAME
from record import RESULTS, machine, run_script, write_json
from render import write_markdown

from fmn_patch import apply_patches, load_base, remove_patches
from fmn_patch.cli.display import shown_on_stderr
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import Bench, load_bench
from fmn_patch.concepts.bench import bench_path as concept_bench_path
from fmn_patch.evaluation.mscore import SamplerConfig, evaluate
from fmn_patch.methods.edit import EditConfig
from fmn_patch.toy.judge import ToyJudge
from fmn_patch.toy.paths import toy_judge_path, toy_pipeline_path

SIZES = (1, 5, 10, 25, 50)
METHODS = ("edit", "train", "fmn", "uce", "speed", "mace")
#: The goals of issue 26 at N = 50, in the same run.
GOALS = {"acc_erased": 0.05, "acc_erased_max": 0.10, "neighbours_kept": 0.90, "kept_ratio": 0.95}


def draws(bench: Bench, size: int, count: int) -> list[list[str]]:
    """`count` seeded draws of `size` identities: the same for every method and every run of the bench."""
    people = sorted(c.name for c in bench.concepts if c.category == "identity")
    if size > len(people):
        raise SystemExit(
            f"--sizes {size}: the bench has {len(people)} identities; ask for at most {len(people)}"
        )
    return [sorted(random.Random(f"{size}/{i}").sample(people, size)) for i in range(count)]


def scored_sets(world: World, erased: list[str], others: int, seed: str) -> dict[str, list[str]]:
    """The concepts a run is scored on, by role: erased, neighbours, other identities, objects, styles."""
    gone = set(erased)
    near = sorted({n for e in erased for n in world.neighbours.get(e, []) if n not in gone})
    rest = sorted(
        c.name for c in world.bench.concepts if c.category == "identity" and c.name not in gone | set(near)
    )
    return {
        "erased": list(erased),
        "neighbours": near,
        "others": sorted(random.Random(seed).sample(rest, min(others, len(rest)))),
        "objects": [c.name for c in world.bench.concepts if c.category == "object"],
        "styles": [c.name for c in world.bench.concepts if c.category == "style"],
    }


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def h_score(acc_erased: float, acc_kept: float) -> float:
    """MACE's H-score: the harmonic mean of efficacy (1 - Acc_erased) and specificity (Acc_kept)."""
    efficacy = 1.0 - acc_erased
    return 0.0 if efficacy + acc_kept == 0 else 2 * efficacy * acc_kept / (efficacy + acc_kept)


def run_one(world: World, method: str, erased: list[str], sets: dict[str, list[str]]) -> dict[str, Any]:
    model, patch, seconds = REGISTRY[method](world, erased)
    names = apply_patches(model, [patch]) if patch is not None else []
    try:
        concepts = [n for role in sets.values() for n in role]
        score = evaluate(model, world.bench, world.judge, world.sampler, concepts, erased, progress=True)
    finally:
        if names:
            remove_patches(model, names)
    size = None
    if patch is not None:
        with tempfile.TemporaryDirectory() as tmp:
            size = patch.save(Path(tmp) / "p.safetensors").stat().st_size
    acc = {n: s.acc for n, s in score.concepts.items()}
    base = world.base
    kept_roles = ("neighbours", "others", "objects", "styles")
    out: dict[str, Any] = {
        "method": method,
        "n": len(erased),
        "erased": erased,
        "acc_erased": _mean([acc[n] for n in erased]),
        "acc_erased_max": max(acc[n] for n in erased),
        "alias": _mean(
            [s.alias_acc for n, s in score.concepts.items() if n in erased and s.alias_acc is not None]
        ),
        "seconds": round(seconds, 2),
        "patch_bytes": size,
    }
    for role in kept_roles:
        out[f"{role}_kept"] = _mean([acc[n] for n in sets[role]])
        out[f"{role}_base"] = _mean([base[n] for n in sets[role]])
    kept = [n for role in kept_roles for n in sets[role]]
    out["acc_kept"] = _mean([acc[n] for n in kept])
    out["base_kept"] = _mean([base[n] for n in kept])
    out["kept_ratio"] = out["acc_kept"] / out["base_kept"] if out["base_kept"] else None
    out["h_score"] = h_score(out["acc_erased"], out["acc_kept"])
    return out


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and N: the mean over draws of every number (max: the max over draws)."""
    out = []
    keys = sorted({(r["method"], r["n"]) for r in rows}, key=lambda k: (k[1], _order(k[0])))
    for method, n in keys:
        group = [r for r in rows if r["method"] == method and r["n"] == n]
        line: dict[str, Any] = {"method": method, "n": n, "draws": len(group)}
        for key, value in group[0].items():
            if key in ("method", "n", "erased") or not isinstance(value, int | float | type(None)):
                continue
            values = [r[key] for r in group if r[key] is not None]
            line[key] = (
                (max(values) if key == "acc_erased_max" else statistics.fmean(values)) if values else None
            )
        out.append(line)
    return out


def _order(method: str) -> tuple[int, str]:
    """A method's place in the tables: METHODS' order, an edit variant after the edit."""
    return METHODS.index(method.split()[0]), method


def load_world(args: argparse.Namespace, base: dict[str, float] | None = None) -> World:
    """The bench, judge and sampler of `args`, and the base's scores (`base`, from a run being resumed, or
    measured now)."""
    bench_path = str(concept_bench_path(args.bench))
    bench = load_bench(bench_path)
    data = json.loads(Path(bench_path).read_text())
    if not data.get("neighbours"):
        raise SystemExit(
            f"--bench {args.bench}: it lists no identity neighbours; use the toy bench (the default)"
        )
    judge = ToyJudge.load(args.judge)
    sampler = SamplerConfig(steps=args.steps, seeds=SamplerConfig.first_seeds(args.seeds))
    if base is None:
        print("scoring the base on every concept", file=sys.stderr)
        score = evaluate(load_base(args.pipeline), bench, judge, sampler, progress=True)
        base = {n: s.acc for n, s in score.concepts.items()}
    return World(str(args.pipeline), bench, bench_path, judge, sampler, base, data["neighbours"])


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a run's rows depend on besides the method, N and draw: a resumed run must have the same."""
    return {
        "pipeline": str(args.pipeline),
        "judge": str(args.judge),
        "bench": str(args.bench),
        "sampler": {"steps": args.steps, "seeds": args.seeds},
        "others": args.others,
    }


@dataclass
class Resumed:
    """What a resumed run keeps of the results file: the base's scores, the finished rows, the record of each run
    that made them, and the rank curve (empty when not resuming)."""

    base: dict[str, float] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    curve: dict[str, Any] | None = None


def resumed(args: argparse.Namespace) -> Resumed:
    """The run in `--results` that `--resume` continues, read once; refuses one made with other settings."""
    path = args.results / f"{NAME}.json"
    if not args.resume:
        return Resumed()
    if not path.is_file():
        raise SystemExit(f"--resume: {path} does not exist; run without --resume to start")
    try:
        record = json.loads(path.read_text())
        result = record["result"]
        theirs = {key: result.get(key) for key in settings(args)}
        kept = Resumed(
            result["base"],
            result["rows"],
            list(record.get("runs") or [record["meta"]]),  # one, where the file predates `runs`
            result.get("rank_curve"),
        )
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SystemExit(
            f"--resume: {path} is not a results file of this bench ({type(e).__name__}: {e}); "
            "move it aside, or run without --resume to start afresh"
        ) from None
    if theirs != settings(args):
        differ = ", ".join(k for k in theirs if theirs[k] != settings(args)[k])
        raise SystemExit(f"--resume: {differ} differ from the run in {path}; give the same, or start afresh")
    return kept


def write_result(args: argparse.Namespace, result: dict[str, Any], earlier: list[dict[str, Any]]) -> None:
    """The results JSON, written aside and renamed into place (a run stopped midway keeps its last rows). `runs`:
    the records of the `earlier` runs whose rows the file keeps, and this one's once it has a row (a row's `run` is
    its index there)."""
    meta = {**machine(), "note": args.note}
    mine = any(r.get("run", 0) == len(earlier) for r in result["rows"])
    runs = [*earlier, meta] if mine else earlier
    record = {"meta": runs[-1] if runs else meta, "runs": runs, "result": result}
    write_json(args.results / f"{NAME}.json", record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline", default=str(toy_pipeline_path()), help="the base (default: the toy)")
    parser.add_argument("--judge", default=str(toy_judge_path()), help="the toy judge's file")
    parser.add_argument(
        "--bench", default="toy", help="a bench name or file with identity neighbours (default: toy)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--erase-weights",
        type=float,
        nargs="+",
        default=[],
        help="also run the edit at these erase weights, each a row (EditConfig.erase_weight; the default: per "
        "category, editor.ERASE)",
    )
    parser.add_argument(
        "--redo",
        nargs="+",
        default=[],
        metavar="METHOD",
        help="with --resume: drop these methods' rows at --sizes and run them again (after a change of defaults)",
    )
    parser.add_argument("--others", type=int, default=24, help="other identities scored per run")
    parser.add_argument("--seeds", type=int, default=2, help="images per prompt")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps")
    parser.add_argument("--note", default="", help="a note for the results")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the results JSON")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --results (same settings): the base's scores and finished rows are kept",
    )
    args = parser.parse_args(argv)
    for name, low in (("sizes", 1), ("draws", 1), ("others", 0), ("seeds", 1), ("steps", 1)):
        for value in getattr(args, name) if name == "sizes" else [getattr(args, name)]:
            if value < low:
                parser.error(f"--{name} {value}: give a whole number of {low} or more")
    if args.redo and not args.resume:
        parser.error("--redo drops rows of a run being resumed: add --resume")
    for weight in args.erase_weights:
        if not 0 < weight <= 1e6:
            parser.error(f"--erase-weights {weight}: give a weight above 0 and at most 1e6")
    variants = dict(edit_variant(w) for w in args.erase_weights)
    REGISTRY.update(variants)
    quiet_libraries()
    before = resumed(args)
    rows = [
        r for r in before.rows if r["method"] not in args.redo or r["n"] not in args.sizes
    ]  # made again here
    earlier = before.runs
    kept_curve = before.curve  # a resumed run that makes no N = 50 edit keeps the curve it had
    run = len(earlier)  # this run's number among the file's runs
    world = load_world(args, before.base)
    done = {(r["method"], r["n"], r["draw"]) for r in rows}
    result: dict[str, Any] = {
        "note": args.note,
        **settings(args),
        "goals": GOALS,
        "base": world.base,
        "complete": False,
        "rank_curve": kept_curve,
    }
    for n in args.sizes:
        for i, erased in enumerate(draws(world.bench, n, args.draws)):
            sets = scored_sets(world, erased, args.others, f"others/{n}/{i}")
            for method in [*args.methods, *variants]:
                if (method, n, i) in done:
                    continue
                row = run_one(world, method, erased, sets)
                row["draw"], row["run"] = i, run
                rows.append(row)
                write_result(args, {**result, "rows": rows, "summary": summary(rows)}, earlier)
                print(
                    f"N={n} draw {i} {method}: erased {row['acc_erased']:.1%} (max {row['acc_erased_max']:.1%}), "
                    f"neighbours {row['neighbours_kept'] or 0:.1%}, kept {row['kept_ratio'] or 0:.1%} of base, "
                    f"H {row['h_score']:.3f}, {row['seconds']:.1f} s",
                    file=sys.stderr,
                )
    curve = kept_curve
    if (
        max(args.sizes) >= 50 and "edit" in args.methods
    ):  # residual against rank and size at N = 50 (first draw)
        from edit_ranks import rank_curve

        erased = draws(world.bench, max(args.sizes), 1)[0]
        config = EditConfig(bench=world.bench_path)
        curve = rank_curve(load_base(world.pipeline), erased, config=config, exact=False)
    result.update(rank_curve=curve, rows=rows, summary=summary(rows), complete=True)
    write_result(args, result, earlier)
    if args.results == RESULTS:
        write_markdown()


def shown() -> None:
    """``main`` with the library's progress channel shown: a bar per run's sampling, as the CLI shows it (closed
    before any one-line ending)."""
    with shown_on_stderr():
        main()


if __name__ == "__main__":
    run_script(shown, "interrupted; the runs finished so far are in the results JSON (--resume goes on)")
