"""Residual against rank for closed-form edits, the patch size each rank costs, and what ``rank="auto"`` picks.

    python bench/edit_ranks.py                      # --preset nsfw, 100 and 1,000 names at SD-1.5 size
    python bench/edit_ranks.py --cases nsfw 100     # fewer
    python bench/edit_ranks.py --toy-quality        # only the toy's erasure against rank (keeps the SD rows)

At SD-1.5 size: the stand-in of ``bench/edit_timing.py`` (SD-1.5 UNet with random attn2 to_k/to_v, SD-1.5-size
CLIP text encoder at random init, the real CLIP tokenizer; nothing downloaded). Each case streams its prompts and
solves once (``edit_patches``) and factors the same solve at every fixed rank of ``RANKS`` (the default path, whose
residuals of wide layers are estimated, and the exact SVD of each formed delta beside it), and at ``rank="auto"``
for each target of ``TARGETS``. Per row: the total relative residual ||D - B A|| / ||D|| over all layers, the worst
layer's, the ranks, the saved file's bytes and the factorisation's seconds. Writes ``bench/results/edit_ranks.json``
and regenerates BENCHMARKS.md.

The stand-in's states are random, so its deltas are close to full rank: its curve is the hard case for a low rank.
``--toy-quality`` ties residual to what matters on the one model here that was trained (the bundled toy, with its
judge): six concepts erased by one edit (``bench/edit_quality.py``'s many-concept run), factored at fixed ranks and
at rank auto for each target, each patch judged (Acc_erased, the kept concept, styles and colours relative to the
base).

``rank_curve`` makes one case's rows on any base (the mass-erasure bench calls it on the toy).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fmn_patch.concepts.prompts import ConceptLike
from fmn_patch.format import Patch
from fmn_patch.format.lowrank import AUTO_CAP, MAX_RESIDUAL
from fmn_patch.methods.edit import EditConfig, edit_patches

HERE = Path(__file__).parent
NAME = "edit_ranks"
RANKS = (1, 2, 4, 8, 16, 32, 64, 128)
TARGETS = (0.05, 0.1, 0.2, 0.3, 0.5)
CASES = ("nsfw", "100", "1000")


def rank_curve(
    base: Any,
    erase: Sequence[ConceptLike],
    *,
    config: EditConfig | None = None,
    category: str | None = None,
    ranks: Sequence[int] = RANKS,
    targets: Sequence[float] = TARGETS,
    exact: bool = True,
) -> dict[str, Any]:
    """One edit of ``erase`` on ``base``, factored at each fixed rank and at ``rank="auto"`` for each target.

    ``config``: the edit's other fields (its rank fields are replaced); ranks above the narrowest layer's
    min(out, in) are left out (they would be capped to it). ``exact``: also factor each fixed rank by the exact SVD
    of the formed deltas (exact residuals; slower at full size). Returns {"fixed": rows, "auto": rows, "rows":
    erase/preserve rows, "stream_s": the encode + solve seconds shared by every row, "narrowest": ...}.
    """
    from fmn_patch.families.base import as_base

    base = as_base(base)
    config = config or EditConfig()
    narrowest = min(min(s) for s in base.family.adapters.target_shapes().values())
    ranks = [r for r in ranks if r <= narrowest]
    fixed = [replace(config, rank=r, exact_svd=None) for r in ranks]
    exacts = [replace(config, rank=r, exact_svd=True) for r in ranks] if exact else []
    autos = [replace(config, rank="auto", max_residual=t, exact_svd=None) for t in targets]
    t0 = time.perf_counter()
    patches = edit_patches(base, erase, configs=[*fixed, *exacts, *autos], category=category)
    wall = time.perf_counter() - t0
    first = patches[0].info.extra
    stream_s = first["seconds"]["total"] - first["seconds"]["svd"]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [_row(p, Path(tmp) / f"{i}.safetensors") for i, p in enumerate(patches)]
    fixed_rows = rows[: len(fixed)]
    for row, exact_row in zip(fixed_rows, rows[len(fixed) : len(fixed) + len(exacts)], strict=False):
        row["exact"] = {k: exact_row[k] for k in ("residual", "worst", "svd_s")}
    return {
        "concepts": len(patches[0].info.concepts),
        "rows": first["rows"],
        "stream_s": round(stream_s, 2),
        "wall_s": round(wall, 1),
        "narrowest": narrowest,
        "layers": len(patches[0].modules),
        "fixed": fixed_rows,
        "auto": rows[len(fixed) + len(exacts) :],
    }


def _row(patch: Patch, path: Path) -> dict[str, Any]:
    extra, config = patch.info.extra, patch.info.config
    residuals = extra["residuals"]
    row = {
        "rank": config["rank"],
        "ranks": patch.rank_summary(),
        "residual": round(extra["residual"], 4),
        "worst": round(max(residuals.values()), 4),
        "residual_kind": extra["residual_kind"],
        "parameters": patch.num_parameters(),
        "bytes": patch.save(path).stat().st_size,
        "svd_s": round(extra["seconds"]["svd"], 3),
    }
    if config["rank"] == "auto":
        row["max_residual"] = config["max_residual"]
        row["layers_above"] = sum(r > config["max_residual"] for r in residuals.values())
    return row


def _case(name: str, tokenizer: Any) -> tuple[list[ConceptLike], str | None]:
    """The concepts of a case: the nsfw preset, or N names (the timing bench's)."""
    from edit_timing import concept_names

    from fmn_patch.concepts.presets import load_preset, preset_concepts

    if name == "nsfw":
        return list(preset_concepts(load_preset("nsfw"), None)), None
    return list(concept_names(tokenizer, int(name))), "identity"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact-SVD column (faster)")
    parser.add_argument("--note", default="", help="conditions of the run (e.g. other load on the machine)")
    parser.add_argument(
        "--toy-quality", action="store_true", help="only the toy's erasure against rank: replace it in --out"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="--toy-quality's sampler seeds")
    parser.add_argument("--out", type=Path, default=HERE / "results" / f"{NAME}.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from record import machine, write_json
    from render import write_markdown

    from fmn_patch.cli.options import quiet_libraries

    quiet_libraries()
    if args.toy_quality:
        record = json.loads(args.out.read_text()) if args.out.exists() else {"cases": {}}
        record["toy_quality"] = {"meta": machine(), **toy_quality(tuple(args.seeds))}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, record)
        write_markdown()
        print(args.out)
        return
    from edit_timing import clip_tokenizer, sd15_pipe

    tokenizer = clip_tokenizer()
    pipe = sd15_pipe(tokenizer)
    cases = {}
    for name in args.cases:
        erase, category = _case(name, tokenizer)
        cases[name] = rank_curve(pipe, erase, category=category, exact=not args.no_exact)
        print(json.dumps({name: cases[name]}), file=sys.stderr)
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    record = {
        "meta": machine(),
        "what": "fmnpatch edit at SD-1.5 size (bench/edit_timing.py's stand-in: random-init UNet projections "
        "and CLIP text encoder, real tokenizer), one solve per case factored at each rank",
        "note": args.note,
        "auto_cap": AUTO_CAP,
        "default_max_residual": MAX_RESIDUAL,
        "cases": cases,
        **({"toy_quality": old["toy_quality"]} if "toy_quality" in old else {}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    write_markdown()
    print(args.out)


def toy_quality(seeds: tuple[int, ...], ranks: Sequence[int] = (1, 2, 4, 8, 16, 32)) -> dict[str, Any]:
    """The toy's many-concept edit factored at each fixed rank and at rank auto per target, each patch judged."""
    from edit_quality import relative, score, with_patch

    from fmn_patch.concepts.bench import load_bench
    from fmn_patch.evaluation.mscore import SamplerConfig
    from fmn_patch.families.base import load_base
    from fmn_patch.toy.judge import ToyJudge

    pipe, bench, judge = load_base("toy"), load_bench("toy"), ToyJudge.load()
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=seeds)
    keep = "star"
    erased = [c.name for c in bench.concepts if c.category in ("object", "identity") and c.name != keep]
    others = [c.name for c in bench.concepts if c.category == "style"] + [keep]
    base = score(pipe, bench, judge, sampler)
    configs = [EditConfig(rank=r) for r in ranks] + [EditConfig(rank="auto", max_residual=t) for t in TARGETS]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, patch in enumerate(edit_patches(pipe, erased, configs=configs)):
            result = with_patch(pipe, patch, lambda: score(pipe, bench, judge, sampler))
            acc = {n: result["concepts"][n]["acc"] for n in erased}
            kept = {n: relative(result["concepts"][n]["acc"], base["concepts"][n]["acc"]) for n in others}
            colours = {k: relative(v, base["colour"][k]) for k, v in result["colour"].items()}
            row = _row(patch, Path(tmp) / f"{i}.safetensors")
            row.update(
                acc_erased_mean=sum(acc.values()) / len(acc),
                acc_erased_max=max(acc.values()),
                kept_min=min([*kept.values(), *colours.values()]),
                kept=kept,
                colours=colours,
            )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return {"erased": erased, "kept": others, "seeds": list(seeds), "rows": rows}


CASE_TITLES = {"nsfw": "--preset nsfw", "100": "100 names", "1000": "1,000 names"}


def ranks_section(read: Callable[[str], Any], provenance: Callable[[Any], str]) -> list[str]:
    """BENCHMARKS.md's section: residual against rank and size, and what rank auto picks."""
    record = read(NAME)
    if not record:
        return []
    lines = ["## Residual against rank: closed-form edit at SD-1.5 size", "", provenance(record), ""]
    lines += [
        record["what"]
        + ". Residual: ||D - B A|| / ||D|| over all 32 layers (default path: wide layers' residuals "
        "estimated with random probes; exact: the exact SVD of each formed delta); worst: the worst layer's. "
        f"`rank auto` gives each layer the smallest rank up to {record['auto_cap']} within the target "
        f"(default {record['default_max_residual']}). The stand-in's text states are random, so its deltas have "
        "no dominant directions and its curve falls slowly: the hard case for a low rank (the toy below has a "
        "trained encoder). Where a layer cannot reach the target it takes the cap, and the edit says how many did.",
        "",
    ]
    if record.get("note"):
        lines += [f"Note: {record['note']}", ""]
    for name, case in record["cases"].items():
        lines += [
            f"**{CASE_TITLES.get(name, name)}** ({case['concepts']} concepts, {case['rows']['erase']} erase / "
            f"{case['rows']['preserve']} preserve rows; encode + solve {case['stream_s']:.1f} s, shared by every "
            "row)",
            "",
            "| rank | residual | exact | worst layer | exact worst | file size | SVD s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in case["fixed"]:
            e = r.get("exact", {})
            lines.append(
                f"| {r['rank']} | {r['residual']:.3f} | {_num(e.get('residual'))} | {r['worst']:.3f} | "
                f"{_num(e.get('worst'))} | {_size(r['bytes'])} | {r['svd_s']:.2f} |"
            )
        lines += [
            "",
            "| rank auto, target | ranks min / median / max | residual | worst layer | layers above target | "
            "file size | SVD s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in case["auto"]:
            k = r["ranks"]
            lines.append(
                f"| {r['max_residual']:g} | {k['min']} / {k['median']:g} / {k['max']} | {r['residual']:.3f} | "
                f"{r['worst']:.3f} | {r['layers_above']} | {_size(r['bytes'])} | {r['svd_s']:.2f} |"
            )
        lines.append("")
    toy = record.get("toy_quality")
    if toy:
        lines += [
            "### What the residual costs in erasure: the toy",
            "",
            provenance(toy),
            "",
            f"The bundled toy model and judge: {', '.join(toy['erased'])} erased by one edit, factored at each "
            f"rank; judged on every bench prompt x seeds {toy['seeds']}. Kept: the lowest of "
            f"{', '.join(toy['kept'])} and the four colours, each relative to the base (one image is 1/"
            f"{8 * len(toy['seeds'])} of a concept's). This sets rank auto's default target: a margin below the "
            "worst-layer residual past which concepts survive.",
            "",
            "| rank | ranks min / median / max | residual | worst layer | Acc_erased mean / max | kept (lowest) | "
            "file size |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in toy["rows"]:
            k = r["ranks"]
            rank = f"auto {r['max_residual']:g}" if r["rank"] == "auto" else str(r["rank"])
            lines.append(
                f"| {rank} | {k['min']} / {k['median']:g} / {k['max']} | {r['residual']:.3f} | {r['worst']:.3f} | "
                f"{r['acc_erased_mean']:.0%} / {r['acc_erased_max']:.0%} | {r['kept_min']:.0%} | "
                f"{_size(r['bytes'])} |"
            )
        lines.append("")
    return lines


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


if __name__ == "__main__":
    main()
