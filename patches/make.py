"""Rebuild the reference patches in this folder (``make patches``): each trained on the bundled toy model, evaluated on
ConceptBench-toy (every concept), with its results in the header, a model card (README-<name>.md) and a before/after
grid of the erased concepts and the kept ones nearest to them (an identity's neighbours, one attribute away).

    python patches/make.py                      # every patch below
    python patches/make.py toy-forget-bob       # some of them
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fmn_patch import SampleConfig, apply_patches, load_base, preview, remove_patches
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import Bench, load_bench
from fmn_patch.evaluation.mscore import SamplerConfig, acc_kept, evaluate
from fmn_patch.hub.card import model_card
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.toy import world
from fmn_patch.toy.judge import ToyJudge

HERE = Path(__file__).parent
REFERENCE = {
    "toy-forget-circle": ["circle"],
    "toy-forget-bob": ["bob"],
    "toy-forget-striped": ["striped"],
    "toy-forget-five": ["circle", "square", "bob", "striped", "star"],
}
#: Kept concepts in every grid, besides the erased ones' neighbours: one of each category.
SHOWN_KEPT = ("triangle", "dotted", "alice")


def grid_prompts(bench: Bench, concepts: list[str]) -> list[str]:
    """The first bench prompt of each erased concept, of up to three neighbours of each erased identity, and of
    SHOWN_KEPT: the bench has 118 concepts, too many rows for one picture."""
    near = [n for c in concepts if c in world.LOOKS for n in world.neighbours(c)[:3]]
    shown = dict.fromkeys([*concepts, *near, *SHOWN_KEPT])
    return [bench.prompts(bench.concept(c))[0] for c in shown]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help=f"patches to rebuild (default: all): {', '.join(REFERENCE)}")
    wanted = parser.parse_args().names or list(REFERENCE)
    for name in wanted:
        if name not in REFERENCE:
            parser.error(f"no reference patch {name!r}; choose from {', '.join(REFERENCE)}")
    quiet_libraries()
    pipe = load_base("toy")
    bench, judge = load_bench("toy"), ToyJudge.load()
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=(0, 1))
    before = evaluate(pipe, bench, judge, sampler).concepts  # once: every patch is read against it
    for name in wanted:
        concepts = REFERENCE[name]
        patch = train_patch(pipe, concepts, TrainConfig(), progress=False)
        applied = apply_patches(pipe, [patch])
        try:
            score = evaluate(pipe, bench, judge, sampler, erased=concepts)
        finally:
            remove_patches(pipe, applied)
        patched = score.concepts
        patch.info.results = {
            "bench": "toy",
            "seeds": list(sampler.seeds),
            "acc_erased": {c: patched[c].acc for c in concepts},
            "alias_acc_erased": {
                c: patched[c].alias_acc for c in concepts if patched[c].alias_acc is not None
            },
            "m_score_after": {c: patched[c].m_score for c in concepts},
            "m_score_before": {c: before[c].m_score for c in concepts},
            "acc_kept": score.acc_kept,
            "base_acc_kept": acc_kept(before, concepts),
        }
        near = {n for c in concepts if c in world.LOOKS for n in world.neighbours(c)} - set(concepts)
        if near:  # the identities one attribute away from an erased one: the hardest to keep
            patch.info.results["neighbours_acc_kept"] = sum(patched[n].acc for n in near) / len(near)
            patch.info.results["base_neighbours_acc_kept"] = sum(before[n].acc for n in near) / len(near)
        patch.info.title = f"toy: forget {', '.join(concepts)}"
        path = patch.save(HERE / f"{name}.safetensors", overwrite=True)
        grid = preview(
            pipe, [patch], grid_prompts(bench, concepts), seeds=sampler.seeds, config=SampleConfig()
        )
        grid.save(HERE / f"{name}.png")
        card = model_card(
            patch,
            repo_id=f"fmn-patch/{name}",
            filename=path.name,
            size_bytes=path.stat().st_size,
            grid=f"{name}.png",
        )
        card.save(HERE / f"README-{name}.md")
        print(name, json.dumps(patch.info.results))


if __name__ == "__main__":
    main()
