"""Cost of forgetting one toy concept: wall time, CPU time, peak memory and patch size per method, medians of runs.

    python bench/train_cost.py                  # circle, 3 runs of each method
    python bench/train_cost.py --runs 5 --concept bob

Methods: re-steering (`train_patch`), closed-form edit (`edit_patch`), hybrid (`TrainConfig(init="edit")`) and the
faithful FMN baseline (whole UNet). Every run is its own process, so its peak memory (max RSS, model included) is
its own; reference images come from the cache (drawn once beforehand), as they would on a retrain. Writes
bench/results/train_cost.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
METHODS = ("resteer", "edit", "hybrid", "fmn-baseline")


def one_run(method: str, concept: str) -> dict[str, Any]:
    from fmn_patch import load_base
    from fmn_patch.cli.options import quiet_libraries
    from fmn_patch.concepts.bench import load_bench
    from fmn_patch.methods.baseline import train_fmn_baseline
    from fmn_patch.methods.edit import edit_patch
    from fmn_patch.methods.resteer import TrainConfig, train_patch

    quiet_libraries()
    pipe = load_base("toy")
    wall, cpu = time.perf_counter(), time.process_time()
    size = None
    if method == "fmn-baseline":
        train_fmn_baseline(pipe, [(concept, load_bench("toy").concept(concept).category)], progress=False)
    else:
        if method == "edit":
            patch = edit_patch(pipe, [concept])
        else:
            config = TrainConfig(init="edit") if method == "hybrid" else TrainConfig()
            patch = train_patch(pipe, [concept], config, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            size = patch.save(Path(tmp) / "p.safetensors").stat().st_size
    return {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "patch_bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", default="")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(one_run(args.child, args.concept)))
        return
    from record import save
    from render import write_markdown

    cmd = [sys.executable, __file__, "--concept", args.concept, "--threads", str(args.threads), "--child"]
    subprocess.run([*cmd, "resteer"], check=True, capture_output=True)  # draws and caches the references
    rows = []
    for method in METHODS:
        runs = [
            json.loads(subprocess.run([*cmd, method], check=True, capture_output=True, text=True).stdout)
            for _ in range(args.runs)
        ]
        row = {
            "method": method,
            "runs": args.runs,
            **{
                k: round(statistics.median(r[k] for r in runs), 3)
                for k in ("wall_s", "cpu_s", "peak_rss_mib")
            },
            "patch_bytes": runs[0]["patch_bytes"],
            "all_wall_s": [round(r["wall_s"], 2) for r in runs],
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    save("train_cost", {"concept": args.concept, "note": args.note, "rows": rows})
    write_markdown()


if __name__ == "__main__":
    main()
