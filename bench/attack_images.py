"""Which images a held-out Concept Inversion brings back: per bench prompt and sampler seed, with the pictures.

    python bench/attack_images.py                                   # circle under today's --robust, 4 seeds
    python bench/attack_images.py --concept bob --design plain --attacks alias-1x --seeds 0 1

A rate of 50% over 8 prompts x 2 seeds can be half the prompts or half the seeds; the two say different things (a
prompt the patch misses, or a starting noise the token steers back to the concept). This draws each (prompt,
seed) apart, judges it, and writes bench/results/attack_images_CONCEPT_DESIGN.json with a picture grid beside it
(.png: a row per attack, prompts left to right, each prompt's seeds side by side), then regenerates BENCHMARKS.md.
The attacks are ``bench/encoder_robust.py``'s held-out ones; the patch is the design's default for the concept.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from encoder_robust import ATTACKS, held_out
from record import machine, run_script, save
from render import write_markdown

from fmn_patch import apply_patches, load_base, remove_patches
from fmn_patch.attacks import InversionAttackConfig, reference_latents
from fmn_patch.attacks.attack import judge_plans
from fmn_patch.attacks.config import AttackConfig
from fmn_patch.attacks.inversion import inversion_plan
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.concepts.prompts import plan
from fmn_patch.evaluation.mscore import SamplerConfig
from fmn_patch.files import atomic_write
from fmn_patch.methods.resteer import ROBUST_ROUNDS, TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge

RESULTS = Path(__file__).parent / "results"


def grid(rows: list[torch.Tensor], scale: int = 2) -> Any:
    """A PIL image of ``rows`` (each (k, 3, H, W) in [0, 1]) stacked top to bottom, ``scale`` x nearest."""
    from PIL import Image

    strips = [torch.cat(list(r.clamp(0, 1).permute(0, 2, 3, 1)), dim=1) for r in rows]  # (H, k W, 3) each
    width = max(s.shape[1] for s in strips)
    pixels = torch.cat([torch.nn.functional.pad(s, (0, 0, 0, width - s.shape[1])) for s in strips])
    image = Image.fromarray((pixels * 255).round().byte().numpy())
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--design", choices=("plain", "robust"), default="robust")
    parser.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=["alias-1x", "word-1x"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3], help="sampler seeds")
    args = parser.parse_args(argv)
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=tuple(args.seeds))  # a bad seed is refused here
    quiet_libraries()
    torch.manual_seed(0)
    bench = load_bench("toy")
    if bench.find(args.concept) is None:
        parser.error(
            f"--concept {args.concept!r}: not in the toy bench; e.g. {', '.join(bench.names[:5])}, ..."
        )
    base, judge = load_base("toy"), ToyJudge.load()
    c = bench.concept(args.concept)
    latents = reference_latents(base, c, bench, InversionAttackConfig().images, steps=20, guidance=5.0)
    rounds = ROBUST_ROUNDS if args.design == "robust" else 0
    patch = train_patch(base, [c.name], TrainConfig(robust_rounds=rounds), progress=False)
    config = AttackConfig(sampler=sampler, grid_images=1)
    found: dict[str, Any] = {}
    rows = []
    names = apply_patches(base, [patch])
    try:
        anchor = plan(c, bench).anchor
        for name in args.attacks:
            attack, seed = held_out(name, c, anchor)
            learned = inversion_plan(base, c, bench, latents, attack, seed)
            plans = [  # one image a plan: each (prompt, seed) judged apart
                (
                    "",
                    f"{p} @ {s}",
                    dataclasses.replace(
                        learned, prompts=[p], sampler=dataclasses.replace(sampler, seeds=(s,))
                    ),
                )
                for p in learned.prompts
                for s in args.seeds
            ]
            results = judge_plans(base, plans, c, judge, config, {"": contextlib.nullcontext}, progress=False)
            hits = iter(r.acc for r in results)
            found[name] = {p: [next(hits) for _ in args.seeds] for p in learned.prompts}
            rows.append(torch.cat([r.samples for r in results if r.samples is not None]))
            share = sum(r.acc for r in results) / len(results)
            print(f"{name}: {share:.1%}", file=sys.stderr, flush=True)
    finally:
        remove_patches(base, names)
    stem = f"attack_images_{args.concept}_{args.design}"
    picture = RESULTS / f"{stem}.png"
    image = grid(rows)
    atomic_write(picture, lambda tmp: image.save(tmp, format="PNG"), overwrite=True)
    meta = machine()
    meta["command"] = "python bench/attack_images.py " + " ".join(sys.argv[1:] if argv is None else argv)
    save(
        stem,
        {
            "concept": c.name,
            "design": args.design,
            "seeds": args.seeds,
            "hits": found,  # attack -> prompt -> one 0/1 per seed
            "picture": picture.name,
        },
    )
    write_markdown()


def attack_images_section(read: Callable[[str], Any], provenance: Callable[[Any], str]) -> list[str]:
    """BENCHMARKS.md's section: per attack, each prompt's hits by seed, and the picture."""
    records = sorted(RESULTS.glob("attack_images_*.json"))
    if not records:
        return []
    lines = ["## Which images an attack brings back (`bench/attack_images.py`)", ""]
    for path in records:
        record = read(path.stem)
        r = record["result"]
        lines += [f"{r['concept']} under the {r['design']} patch. {provenance(record)}", ""]
        seeds = r["seeds"]
        lines += ["| attack | prompt | " + " | ".join(f"seed {s}" for s in seeds) + " |"]
        lines += ["|---|---|" + "---|" * len(seeds)]
        for attack, prompts in r["hits"].items():
            for prompt, hits in prompts.items():
                marks = " | ".join("shows it" if h else "-" for h in hits)
                lines.append(f"| {attack} | `{prompt}` | {marks} |")
        lines += [
            "",
            f"The pictures: a row per attack ({', '.join(r['hits'])}), the prompts left to right as listed, each "
            f"prompt's seeds ({', '.join(map(str, seeds))}) side by side.",
            "",
            f"![{r['concept']} under {r['design']}](bench/results/{r['picture']})",
            "",
        ]
    return lines


if __name__ == "__main__":
    run_script(main)
