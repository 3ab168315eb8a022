"""Rebuild the reference patches in this folder (``make patches``): each trained on the bundled toy model, evaluated on
ConceptBench-toy, with its results in the header, a model card (README-<name>.md) and a before/after grid.

    python patches/make.py
"""

from __future__ import annotations

import json
from pathlib import Path

from fmn_patch import load_base
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation import evaluate_patches
from fmn_patch.evaluation.mscore import SamplerConfig
from fmn_patch.hub.card import model_card
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge

HERE = Path(__file__).parent
REFERENCE = {
    "toy-forget-circle": ["circle"],
    "toy-forget-bob": ["bob"],
    "toy-forget-striped": ["striped"],
    "toy-forget-five": ["circle", "square", "bob", "striped", "star"],
}


def main() -> None:
    quiet_libraries()
    pipe = load_base("toy")
    bench, judge = load_bench("toy"), ToyJudge.load()
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=(0, 1))
    for name, concepts in REFERENCE.items():
        patch = train_patch(pipe, concepts, TrainConfig(), progress=False)
        report = evaluate_patches(pipe, [patch], bench, judge, sampler, patch_names=[f"{name}.safetensors"])
        comparison = report.comparison()
        patched = report.models[-1].score.concepts
        patch.info.results = {
            "bench": "toy",
            "seeds": list(sampler.seeds),
            "acc_erased": {c: patched[c].acc for c in concepts},
            "alias_acc_erased": {
                c: patched[c].alias_acc for c in concepts if patched[c].alias_acc is not None
            },
            "m_score_after": {c: patched[c].m_score for c in concepts},
            "m_score_before": {c: report.models[0].score.concepts[c].m_score for c in concepts},
            "acc_kept": comparison["patched_acc_kept"],
            "base_acc_kept": comparison["base_acc_kept"],
        }
        patch.info.title = f"toy: forget {', '.join(concepts)}"
        path = patch.save(HERE / f"{name}.safetensors", overwrite=True)
        assert report.grid is not None
        report.grid.save(HERE / f"{name}.png")
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
