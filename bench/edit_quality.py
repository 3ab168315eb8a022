"""Quality of ``fmnpatch edit`` on the toy world (CPU): does the closed-form edit forget, and only that?

    python bench/edit_quality.py                          # the acceptance runs, defaults of EditConfig
    python bench/edit_quality.py --config '{"push": 2}'   # the same with EditConfig overrides
    python bench/edit_quality.py --keep star --single circle bob

Runs, on the bundled toy model and judge, with the toy ConceptBench (every concept's 8 prompts and its alias
prompts, DDIM 20 steps, guidance 5, seeds 0 and 1):

- base: per-concept accuracy, alias accuracy, and colour accuracy (the judge's colour head against the colour the
  prompt names) per colour;
- single: each ``--single`` concept erased alone by one patch: wall time of ``edit_patch`` (model loaded),
  Acc_erased, alias accuracy, Acc_kept relative to base;
- many: every object and identity but ``--keep`` erased by one patch: Acc_erased of each, the kept concept's,
  each style's and each colour's accuracy relative to base.

Patches are applied with ``apply_patches`` (diffusers' LoRA loader) and removed after each run. Writes
``bench/results/edit_quality.json`` with the acceptance checks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fmn_patch.concepts.bench import Bench, load_bench
from fmn_patch.evaluation.mscore import SamplerConfig, generate, judged
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import apply_patches, remove_patches
from fmn_patch.methods.edit import EditConfig, edit_patch
from fmn_patch.toy.judge import TOY_HEADS, ToyJudge
from fmn_patch.toy.world import COLOURS

HERE = Path(__file__).parent


def score(pipe: Any, bench: Bench, judge: ToyJudge, sampler: SamplerConfig) -> dict[str, Any]:
    """Accuracy per concept (own prompts and alias prompts) and colour accuracy per colour, one generation pass."""
    groups: list[tuple[str, str | None, list[str]]] = []
    for c in bench.concepts:
        groups.append((c.name, None, bench.prompts(c)))
        groups.extend((c.name, alias, bench.prompts(c, alias)) for alias in c.aliases)
    prompts = [p for _, _, ps in groups for p in ps]
    images = generate(pipe, prompts, sampler, progress=False)
    colour_probs = judge.probs(images)["colour"]  # (N, 4)
    per_prompt = len(sampler.seeds)
    colours = [
        next(k for k in COLOURS if k in p.split() or f"{k}," in p) for p in prompts for _ in sampler.seeds
    ]
    concepts: dict[str, dict[str, float]] = {}
    colour_hits: dict[str, list[bool]] = {k: [] for k in COLOURS}
    start = 0
    for name, alias, ps in groups:
        chunk = images[start : start + len(ps) * per_prompt]
        _, acc = judged(judge, chunk, bench.concept(name))
        concepts.setdefault(name, {})["alias_acc" if alias else "acc"] = acc
        for i in range(start, start + len(chunk)):
            colour_hits[colours[i]].append(TOY_HEADS["colour"][int(colour_probs[i].argmax())] == colours[i])
        start += len(chunk)
    colour = {k: sum(v) / len(v) for k, v in colour_hits.items()}
    return {"concepts": concepts, "colour": colour, "images": len(images)}


def with_patch(pipe: Any, patch: Any, fn: Any) -> Any:
    names = apply_patches(pipe, [patch])
    try:
        return fn()
    finally:
        remove_patches(pipe, names)


def relative(value: float, base: float) -> float:
    return value / base if base > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="{}", help="EditConfig overrides as JSON")
    parser.add_argument("--single", nargs="+", default=["circle", "bob"])
    parser.add_argument("--keep", default="star", help="the one object/identity left in the many-concept run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "edit_quality.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from fmn_patch.cli.options import quiet_libraries

    quiet_libraries()
    config = EditConfig(**json.loads(args.config))
    pipe, bench, judge = load_base("toy"), load_bench("toy"), ToyJudge.load()
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=tuple(args.seeds))
    base = score(pipe, bench, judge, sampler)
    log("base", base)
    base_acc = {n: s["acc"] for n, s in base["concepts"].items()}

    singles = {}
    for name in args.single:
        edit_patch(pipe, [name], config=config)  # warm-up (first-call overheads), not timed
        t0 = time.perf_counter()
        patch = edit_patch(pipe, [name], config=config)
        wall = time.perf_counter() - t0
        result = with_patch(pipe, patch, lambda: score(pipe, bench, judge, sampler))
        kept = [n for n in base_acc if n != name]
        kept_acc = sum(result["concepts"][n]["acc"] for n in kept) / len(kept)
        base_kept = sum(base_acc[n] for n in kept) / len(kept)
        singles[name] = {
            "wall_s": wall,
            "acc_erased": result["concepts"][name]["acc"],
            "alias_acc": result["concepts"][name].get("alias_acc"),
            "acc_kept": kept_acc,
            "acc_kept_base": base_kept,
            "acc_kept_relative": relative(kept_acc, base_kept),
            "residual": patch.info.extra["residual"],
            "scores": result,
        }
        log(f"single {name}", singles[name])

    erased = [c.name for c in bench.concepts if c.category in ("object", "identity") and c.name != args.keep]
    t0 = time.perf_counter()
    patch = edit_patch(pipe, erased, config=config)
    wall = time.perf_counter() - t0
    result = with_patch(pipe, patch, lambda: score(pipe, bench, judge, sampler))
    acc = {n: s["acc"] for n, s in result["concepts"].items()}
    styles = [c.name for c in bench.concepts if c.category == "style"]
    many = {
        "erased": erased,
        "kept": args.keep,
        "wall_s": wall,
        "acc_erased": {n: acc[n] for n in erased},
        "alias_acc": {
            n: s["alias_acc"] for n, s in result["concepts"].items() if n in erased and "alias_acc" in s
        },
        "kept_relative": relative(acc[args.keep], base_acc[args.keep]),
        "styles_relative": {n: relative(acc[n], base_acc[n]) for n in styles},
        "colours_relative": {k: relative(v, base["colour"][k]) for k, v in result["colour"].items()},
        "residual": patch.info.extra["residual"],
        "scores": result,
    }
    log("many", many)

    checks = {}
    for name, s in singles.items():
        checks[f"single {name}: wall <= 1 s"] = s["wall_s"] <= 1.0
        checks[f"single {name}: Acc_erased <= 5%"] = s["acc_erased"] <= 0.05
        if s["alias_acc"] is not None:
            checks[f"single {name}: alias <= 10%"] = s["alias_acc"] <= 0.10
        checks[f"single {name}: Acc_kept >= 97% of base"] = s["acc_kept_relative"] >= 0.97
    for name, a in many["acc_erased"].items():
        checks[f"many: {name} Acc_erased <= 5%"] = a <= 0.05
    checks[f"many: kept {args.keep} >= 90% of base"] = many["kept_relative"] >= 0.90
    for name, r in {**many["styles_relative"], **many["colours_relative"]}.items():
        checks[f"many: {name} >= 90% of base"] = r >= 0.90
    sys.path.insert(0, str(HERE))
    from record import machine, write_json

    record = {
        "meta": machine(),
        "config": {**json.loads(args.config), "resolved": config.__dict__},
        "sampler": {"steps": sampler.steps, "guidance": sampler.guidance, "seeds": list(sampler.seeds)},
        "base": base,
        "single": singles,
        "many": many,
        "checks": checks,
        "passed": all(checks.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    for check, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {check}", file=sys.stderr)
    print(args.out)


def log(label: str, data: dict[str, Any]) -> None:
    short = {k: v for k, v in data.items() if k != "scores"}
    print(f"{label}: {json.dumps(short, default=str)[:1500]}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
