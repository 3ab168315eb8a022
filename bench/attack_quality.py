"""Does forgetting hold under attack? Train the default patch for one toy concept, then attack it and the base.

    python bench/attack_quality.py                    # circle, default budgets (a few minutes on one CPU thread)
    python bench/attack_quality.py --concept bob --search-seconds 30

Attacks (fmn_patch/attacks/): direct (the bench's prompts, no attack), paraphrase (unseen word orders and
aliases), inversion (Concept Inversion: a new token learned against the patched model from the base's pictures of
the concept) and search (greedy coordinate search over the vocabulary for a prompt that minimises the patched
model's denoising loss on those pictures). acc = share of the attack's images that the toy judge calls the
concept: attack success. Writes bench/results/attack_<concept>.json and attack_<concept>.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from record import RESULTS, save

from fmn_patch import load_base
from fmn_patch.attacks import AttackConfig, SearchConfig, run_attacks
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--search-seconds", type=float, default=SearchConfig.seconds)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    pipe, bench, judge = load_base("toy"), load_bench("toy"), ToyJudge.load()
    train_config = TrainConfig()
    started = time.perf_counter()
    patch = train_patch(pipe, [args.concept], train_config)
    train_seconds = time.perf_counter() - started
    config = AttackConfig(search=SearchConfig(seconds=args.search_seconds))
    report = run_attacks(
        pipe, [patch], args.concept, judge, bench, config, patch_names=["train_patch (default)"]
    )
    print(report.to_markdown(), file=sys.stderr)
    result = {
        "concept": args.concept,
        "patch": {
            "method": patch.info.method,
            "train_seconds": round(train_seconds, 1),
            # the config's bench None means the base's: recorded as the bench it resolved to (toy)
            "config": {**dataclasses.asdict(train_config), "bench": bench.name},
        },
        "budgets": {
            "inversion": config.inversion,
            "search": config.search,
            "image_steps": config.image_steps,
        },
        "report": report.to_dict(),
    }
    save(f"attack_{args.concept}", _plain(result))
    if report.grid is not None:
        report.grid.save(RESULTS / f"attack_{args.concept}.png")


def _plain(obj: Any) -> Any:
    """Dataclasses as dicts, for JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


if __name__ == "__main__":
    main()
