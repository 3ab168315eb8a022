"""Forgetting quality on the toy world: every method the project offers vs the faithful FMN baseline, in one run.

    python bench/train_quality.py            # every toy concept one at a time, five at once, stacking, ablations
    python bench/train_quality.py --quick    # three concepts (one per category) and five at once

Methods: the re-steering patch (``train_patch``) with today's defaults and with the defaults before issue 16
(``OLD_DEFAULTS``: 150 steps x batch 8 from zero, fresh samples every step), side by side; the closed-form edit
(``edit_patch``, where today's default training starts) and the faithful FMN baseline (whole UNet). Stacking: two
single-concept patches applied together vs one patch trained on both. For each: Acc_erased (share of the concept's
images the judge still calls the concept), alias Acc_erased, Acc_kept (mean acc over the other concepts) and its
ratio to the base model's over the same set, M-Score before/after, wall time and patch size. Writes
bench/results/train_quality.json and train_quality.png (one image per concept for each five-at-once model) and
regenerates BENCHMARKS.md.
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

from record import OLD_DEFAULTS, RESULTS, machine
from render import write_markdown

from fmn_patch import apply_patches, load_base, remove_patches
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.grid import image_grid
from fmn_patch.evaluation.mscore import ModelScore, SamplerConfig, acc_kept, concept_samples, evaluate
from fmn_patch.format import Patch
from fmn_patch.methods.baseline import FMNConfig, train_fmn_baseline
from fmn_patch.methods.edit import edit_patch
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge

FIVE = ["circle", "square", "bob", "striped", "star"]
QUICK = ["circle", "bob", "striped"]
STACK = ["circle", "bob"]
OLD = TrainConfig(**OLD_DEFAULTS)
# Ablations, run on QUICK: what each part of our objective buys.
ABLATIONS = {
    "keys-only (to_v frozen)": TrainConfig(train_values=False),
    "re-steering only (FMN loss, our LoRA)": TrainConfig(denoise_weight=0.0),
}


def row(
    method: str,
    erased: list[str],
    score: ModelScore,
    base: ModelScore,
    seconds: float,
    size: int | None,
    samples: dict[str, int] | None = None,
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
        "samples": samples,  # denoiser samples by phase (pool, steps, attacks), from the patch headers
    }


def scored(
    pipe: Any,
    patches: list[Patch],
    concepts: list[str],
    judge: ToyJudge,
    bench: Any,
    sampler: SamplerConfig,
    base: ModelScore,
    seconds: float,
    label: str,
) -> dict:
    """Apply ``patches``, judge every bench prompt, take them off again; one result row."""
    with tempfile.TemporaryDirectory() as tmp:
        size = sum(p.save(Path(tmp) / f"p{i}.safetensors").stat().st_size for i, p in enumerate(patches))
    names = apply_patches(pipe, patches)
    try:
        score = evaluate(pipe, bench, judge, sampler, erased=concepts, progress=False)
    finally:
        remove_patches(pipe, names)
    samples: dict[str, int] = {}
    for patch in patches:
        for phase, n in patch.info.extra.get("cost", {}).get("samples", {}).items():
            samples[phase] = samples.get(phase, 0) + n
    return row(label, concepts, score, base, seconds, size, samples or None)


def trained(pipe: Any, concepts: list[str], config: TrainConfig) -> tuple[Patch, float]:
    started = time.perf_counter()
    patch = train_patch(pipe, concepts, config, progress=False)
    return patch, time.perf_counter() - started


def edited(pipe: Any, concepts: list[str]) -> tuple[Patch, float]:
    started = time.perf_counter()
    patch = edit_patch(pipe, concepts)
    return patch, time.perf_counter() - started


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
    patch, seconds = trained(pipe, concepts, config)
    return scored(pipe, [patch], concepts, judge, bench, sampler, base, seconds, label)


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
    parser.add_argument("--seeds", type=int, default=3, help="sampler seeds per bench prompt")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-ablations", action="store_true", help="skip the ablation rows")
    parser.add_argument("--no-stack", action="store_true", help="skip the two-patches-stacked rows")
    parser.add_argument("--no-edit", action="store_true", help="skip the closed-form edit rows")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription)")
    parser.add_argument(
        "--part",
        type=int,
        choices=[0, 1, 2],
        default=0,
        help="0: everything; 1 / 2: one half each (run both at once, one per core, then --merge)",
    )
    parser.add_argument("--merge", action="store_true", help="combine the two parts' results")
    args = parser.parse_args()
    if args.merge:
        merge()
        return
    torch.set_num_threads(args.threads)
    quiet_libraries()
    torch.manual_seed(0)
    bench = load_bench("toy")
    judge = ToyJudge.load()
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=tuple(range(args.seeds)))
    pipe = load_base("toy")
    base = evaluate(pipe, bench, judge, sampler, progress=False)
    names = QUICK if args.quick else bench.names
    half = (len(names) + 1) // 2
    singles = {0: names, 1: names[:half], 2: names[half:]}[args.part]
    config = TrainConfig()
    rows: list[dict] = []

    def add(result: dict) -> None:
        rows.append(result)
        print(json.dumps(result), file=sys.stderr)

    single_patches: dict[str, tuple[Patch, float]] = {}
    for concept in singles:
        patch, seconds = trained(pipe, [concept], config)
        single_patches[concept] = patch, seconds
        add(scored(pipe, [patch], [concept], judge, bench, sampler, base, seconds, "resteer"))
        add(ours(pipe, [concept], judge, bench, sampler, base, OLD, "resteer, old defaults"))
        if concept in QUICK and not args.no_edit:
            patch, seconds = edited(pipe, [concept])
            add(scored(pipe, [patch], [concept], judge, bench, sampler, base, seconds, "edit"))
        if not args.no_baseline:
            add(baseline([concept], judge, bench, sampler, base))
    if args.part in (0, 1):
        for label, variant in ({} if args.no_ablations else ABLATIONS).items():
            for concept in QUICK:
                add(ours(pipe, [concept], judge, bench, sampler, base, variant, label))
    columns = {}
    if args.part in (0, 2):
        if not args.no_stack:
            stacked = [
                single_patches[c] if c in single_patches else trained(pipe, [c], config) for c in STACK
            ]
            seconds = sum(s for _, s in stacked)
            patches = [p for p, _ in stacked]
            label = "resteer, two patches stacked"
            add(scored(pipe, patches, STACK, judge, bench, sampler, base, seconds, label))
            add(ours(pipe, STACK, judge, bench, sampler, base, config, "resteer, one patch on both"))
        five = {"resteer": trained(pipe, FIVE, config)}
        if not args.no_edit:
            five["edit"] = edited(pipe, FIVE)
        five["resteer, old defaults"] = trained(pipe, FIVE, OLD)
        columns["base"] = concept_samples(pipe, bench, bench.names, sampler, progress=False)
        for label, (patch, seconds) in five.items():
            add(scored(pipe, [patch], FIVE, judge, bench, sampler, base, seconds, label))
            names_on = apply_patches(pipe, [patch])
            columns[f"{label} (5)"] = concept_samples(pipe, bench, bench.names, sampler, progress=False)
            remove_patches(pipe, names_on)
        if not args.no_baseline:
            add(baseline(FIVE, judge, bench, sampler, base))
    RESULTS.mkdir(parents=True, exist_ok=True)
    if columns:
        image_grid(columns, bench.names, RESULTS / "train_quality.png")
    result = {
        "sampler": {"steps": sampler.steps, "guidance": sampler.guidance, "seeds": list(sampler.seeds)},
        # the config's bench None means the base's: recorded as the bench it resolved to (toy)
        "train_config": {
            **config.__dict__,
            "preserve_extra": list(config.preserve_extra),
            "bench": bench.name,
        },
        "base": {n: s.to_dict() for n, s in base.concepts.items()},
        "grid": "train_quality.png",
        "rows": rows,
    }
    name = "train_quality.json" if args.part == 0 else f"train_quality.part{args.part}.json"
    (RESULTS / name).write_text(json.dumps({"meta": machine(), "result": result}, indent=2) + "\n")
    if args.part == 0:
        write_markdown()
    print(RESULTS / name)


def merge() -> None:
    """train_quality.json from the two parts (same sampler, config and base scores), rows in part order."""
    parts = [json.loads((RESULTS / f"train_quality.part{i}.json").read_text()) for i in (1, 2)]
    first, second = parts
    for key in ("sampler", "train_config", "base"):
        if first["result"][key] != second["result"][key]:
            raise SystemExit(f"the two parts differ in {key}; rerun both with the same options")
    merged = first["result"] | {"rows": first["result"]["rows"] + second["result"]["rows"]}
    meta = first["meta"] | {
        "command": f"{first['meta']['command']} + {second['meta']['command']} (two processes)"
    }
    (RESULTS / "train_quality.json").write_text(json.dumps({"meta": meta, "result": merged}, indent=2) + "\n")
    write_markdown()
    print(RESULTS / "train_quality.json")


if __name__ == "__main__":
    main()
