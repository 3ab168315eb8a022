"""What `edit` of N identities costs on the toy: issue 26's cost goal (the edit of 50 in at most 1 s).

    python bench/toy_edit_timing.py                       # N = 1, 10, 50 on the mass-erasure bench's 3 draws
    python bench/toy_edit_timing.py --sizes 50 --repeats 9

Each draw is edited `--repeats` times after one warm-up (the toy loaded once; the prompts' encoding, the solve, the
SVD and the patch's header, everything `edit_patch` does), timed by the wall clock and by the process's CPU time,
so that a run beside other jobs still says what the edit itself costs. The draws are the mass-erasure bench's
(`bench/mass_erasure.py`, the same seeds). Torch threads are the library's choice for the toy (FMNPATCH_THREADS
overrides). Writes bench/results/toy_edit_timing.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

NAME = "toy_edit_timing"
GOAL_S = 1.0  # issue 26: the edit of 50 identities on the toy


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each of ``repeats`` calls of ``fn``, after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.draws < 1 or args.repeats < 1:
        parser.error("--sizes, --draws and --repeats take 1 or more")
    from mass_erasure import draws
    from record import save
    from render import write_markdown

    from fmn_patch import load_base
    from fmn_patch.cli.options import quiet_libraries
    from fmn_patch.concepts.bench import load_bench
    from fmn_patch.methods.edit import edit_patch

    quiet_libraries()
    base, bench = load_base("toy"), load_bench("toy")
    rows = []
    for n in args.sizes:
        for i, erased in enumerate(draws(bench, n, args.draws)):
            wall, cpu = timed(functools.partial(edit_patch, base, erased), args.repeats)
            rows.append(
                {
                    "n": n,
                    "draw": i,
                    "wall_s": round(statistics.median(wall), 3),
                    "cpu_s": round(statistics.median(cpu), 3),
                    "wall_all": [round(x, 3) for x in wall],
                }
            )
            print(f"N={n} draw {i}: {rows[-1]['wall_s']} s wall, {rows[-1]['cpu_s']} s CPU", file=sys.stderr)
    save(NAME, {"note": args.note, "goal_s": GOAL_S, "rows": rows})
    write_markdown()


def toy_edit_timing_section(read: Callable[[str], Any], provenance: Callable[[Any], str]) -> list[str]:
    """BENCHMARKS.md's section: median seconds of the edit per N and draw."""
    record = read(NAME)
    if not record:
        return []
    meta = {**record["meta"], "note": record["result"]["note"]}
    lines = [
        "## The edit of many identities on the toy (`bench/toy_edit_timing.py`, issue 26's cost goal)",
        "",
        provenance({"meta": meta}),
        "",
        f"`edit_patch` of N identities (the mass-erasure bench's draws), median of each draw's repeats after a "
        f"warm-up; the goal is {record['result']['goal_s']:g} s for N = 50. CPU: the process's CPU time.",
        "",
        "| N | draw | wall (s) | CPU (s) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['n']} | {r['draw']} | {r['wall_s']} | {r['cpu_s']} |" for r in record["result"]["rows"]]
    return [*lines, ""]


if __name__ == "__main__":
    main()
