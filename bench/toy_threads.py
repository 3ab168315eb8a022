"""How many torch threads should toy-sized training use? Steps per second at 1 and 2 threads, alone and in pairs.

    python bench/toy_threads.py                 # toy and toy-sd3, 3 rounds (about 10 minutes on 2 cores)
    python bench/toy_threads.py --rounds 1 --steps 20

Each run is a child process that trains one patch (`train_patch`, circle) for a fixed number of steps with a set
torch thread count, and times the training loop alone (base loading and reference images excluded: they are drawn
once beforehand and cached). "alone": one run on the machine; "pair": two identical runs started together, as the
mass-erasure bench and a busy desktop run toy jobs. Rounds interleave every variant; rates are medians. Writes
bench/results/toy_threads.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
NAME = "toy_threads"
BASES = ("toy", "toy-sd3")


def child(base: str, threads: int, steps: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    from fmn_patch import load_base
    from fmn_patch.cli.options import quiet_libraries
    from fmn_patch.methods.resteer import TrainConfig, train_patch

    quiet_libraries()
    pipe = load_base(base)
    config = TrainConfig(steps=steps, batch_size=4)
    train_patch(pipe, ["circle"], TrainConfig(steps=1, batch_size=4), progress=False)  # references, warm-up
    start = time.perf_counter()
    train_patch(pipe, ["circle"], config, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps_per_s": steps / seconds}


def launch(base: str, threads: int, steps: int, copies: int) -> list[float]:
    """Start `copies` identical children at once; their steps per second."""
    cmd = [sys.executable, __file__, "--child", base, "--threads", str(threads), "--steps", str(steps)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    rates = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a child failed ({proc.returncode}): {shlex.join(cmd)}")
        rates.append(json.loads(out.strip().splitlines()[-1])["steps_per_s"])
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="training steps timed per run (default 40)")
    parser.add_argument("--child", choices=BASES, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps take 1 or more")
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.steps)))
        return
    from record import machine, write_json  # bench/record.py: provenance
    from render import write_markdown

    variants = [(b, t, mode) for b in BASES for t in (1, 2) for mode in ("alone", "pair")]
    rates: dict[tuple[str, int, str], list[float]] = {v: [] for v in variants}
    for base in BASES:  # draw and cache each base's reference images once, untimed
        launch(base, 2, 1, 1)
    for round_ in range(args.rounds):
        for base, threads, mode in variants:
            got = launch(base, threads, args.steps, 2 if mode == "pair" else 1)
            rates[(base, threads, mode)] += got
            print(f"round {round_ + 1}: {base} {threads} threads {mode}: {got}", flush=True)
    rows = [
        {
            "base": base,
            "threads": threads,
            "mode": mode,
            "steps_per_s": statistics.median(values),
            "all": [round(v, 3) for v in values],
        }
        for (base, threads, mode), values in rates.items()
    ]
    record: dict[str, Any] = {
        "meta": machine() | {"command": "python bench/toy_threads.py " + shlex.join(sys.argv[1:])},
        "steps": args.steps,
        "rows": rows,
    }
    out = HERE / "results" / f"{NAME}.json"
    write_json(out, record)
    write_markdown()
    print(out)


def threads_section(read: Any, provenance: Any) -> list[str]:
    """BENCHMARKS.md's section, from bench/results/toy_threads.json."""
    record = read(NAME)
    if not record:
        return []
    by = {(r["base"], r["threads"], r["mode"]): r for r in record["rows"]}
    lines = [
        "## Torch threads for toy-sized training",
        "",
        provenance(record),
        "",
        f"`train_patch` on circle, {record['steps']} steps of batch 4, timed apart from loading and references;",
        "steps per second, median over rounds (a pair's two runs both count). 'pair': two identical runs at once.",
        "",
        "| base | 1 thread alone | 2 threads alone | 1 thread, pair | 2 threads, pair | 1 / 2 threads alone | "
        "1 / 2 threads in a pair |",
        "|---|---|---|---|---|---|---|",
    ]
    for base in BASES:
        a1, a2 = by[(base, 1, "alone")]["steps_per_s"], by[(base, 2, "alone")]["steps_per_s"]
        p1, p2 = by[(base, 1, "pair")]["steps_per_s"], by[(base, 2, "pair")]["steps_per_s"]
        lines.append(
            f"| {base} | {a1:.2f} | {a2:.2f} | {p1:.2f} | {p2:.2f} | {a1 / a2:.2f}x | {p1 / p2:.2f}x |"
        )
    lines.append("")
    return lines


if __name__ == "__main__":
    main()
