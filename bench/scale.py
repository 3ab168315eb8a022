"""`fmnpatch eval` on one process and on several (`accelerate launch`): wall time of the whole command, side by side.

    python bench/scale.py                    # toy eval of a circle patch, 3 interleaved rounds, CPU
    python bench/scale.py --repeats 1 --seeds 1
    python bench/scale.py --device cuda --repeats 3           # a GPU machine: 1 GPU vs all of them
    python bench/scale.py --device cuda --processes 8 --base ./sd15 --bench real --clip openai/clip-vit-large-patch14

CPU rows: one process with one thread, one process with as many threads as processes (the default of a plain
`fmnpatch eval` on this machine), and N processes with one thread each (`accelerate launch --multi_gpu
--num_processes N`, which on a machine without a GPU starts N CPU processes through torchrun). GPU rows: one
process on one GPU, N processes on N GPUs. Each run is the whole command in a fresh process (imports, loading the
base and judge, drawing, judging, writing), timed from outside; the eval's own throughput line gives the drawing and
judging alone. The rounds interleave the rows so that the machine's other load falls on all of them alike; the load
average at each start is recorded. Every report is compared with the first row's: equal numbers, or the largest
difference. Writes bench/results/scale.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(processes: int, threads: int, eval_args: list[str]) -> list[str]:
    """The whole eval command: plain for one process, under `accelerate launch` for several."""
    if processes == 1:
        return [sys.executable, "-m", "fmn_patch", *eval_args]
    return [
        *(
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
        ),
        *("--num_cpu_threads_per_process", str(threads), "--main_process_port", str(_free_port())),
        *("-m", "fmn_patch", *eval_args),
    ]


def one_run(row: dict[str, Any], eval_args: list[str], out: Path, device: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = str(row["threads"])
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(
        command(row["processes"], row["threads"], [*eval_args, "--output", str(out), "--overwrite"]),
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{row['label']} failed:\n{done.stderr[-3000:]}")
    found = re.search(r"eval \S+: (\d+) images in ([\d.]+) s", done.stderr)
    return {
        "wall_s": wall,
        "draw_s": float(found.group(2)) if found else None,
        "images": int(found.group(1)) if found else None,
        "load_1min": load,
    }


def numbers(obj: Any, path: str = "") -> dict[str, float]:
    """Every number of a report by its path."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in numbers(value, f"{path}/{key}").items()}
    if isinstance(obj, list):
        return {k: v for i, value in enumerate(obj) for k, v in numbers(value, f"{path}/{i}").items()}
    return {path: float(obj)} if isinstance(obj, (int, float)) and not isinstance(obj, bool) else {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, help="default: 2 on CPU, every GPU with --device cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--base", default="toy")
    parser.add_argument(
        "--patch", help="patch to evaluate (default: the closed-form edit of circle, made here)"
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--note", default="")
    args, extra = parser.parse_known_args()  # the rest goes to `fmnpatch eval` (--bench, --clip, ...)
    from record import save
    from render import write_markdown

    n = args.processes
    if n is None:
        import torch

        n = torch.cuda.device_count() if args.device.startswith("cuda") else 2
    if n < 2:
        raise SystemExit(f"{n} process(es): nothing to compare; a GPU comparison needs at least 2 GPUs")
    if args.device == "cpu":
        rows = [
            {"label": "1 process x 1 thread", "processes": 1, "threads": 1},
            {"label": f"1 process x {n} threads", "processes": 1, "threads": n},
            {"label": f"{n} processes x 1 thread", "processes": n, "threads": 1},
        ]
    else:
        rows = [
            {"label": "1 GPU", "processes": 1, "threads": 1},
            {"label": f"{n} GPUs", "processes": n, "threads": 1},
        ]
    with tempfile.TemporaryDirectory() as tmp:
        patch = args.patch
        if patch is None:
            patch = str(Path(tmp) / "circle.safetensors")
            make = [sys.executable, "-m", "fmn_patch", "edit", "circle", "--base", args.base, "-o", patch]
            subprocess.run(make, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        eval_args = ["eval", args.base, patch, "--seeds", str(args.seeds), "--steps", str(args.steps)]
        eval_args += ["--device", args.device, *extra]
        runs: list[list[dict[str, Any]]] = [[] for _ in rows]
        reports: list[dict[str, Any]] = []
        for r in range(args.repeats):
            for k, row in enumerate(rows):
                out = Path(tmp) / f"row{k}"
                runs[k].append(one_run(row, eval_args, out, args.device))
                print(f"round {r + 1}: {row['label']}: {runs[k][-1]}", file=sys.stderr)
                if r == 0:
                    reports.append(json.loads((out / "report.json").read_text()))
    first = numbers(reports[0])
    for k, row in enumerate(rows):
        row["wall_s"] = statistics.median(x["wall_s"] for x in runs[k])
        draws = [x["draw_s"] for x in runs[k] if x["draw_s"] is not None]
        row["draw_s"] = statistics.median(draws) if draws else None
        row["images"] = runs[k][0]["images"]
        row["images_per_s"] = row["images"] / row["draw_s"] if row["draw_s"] else None
        row["all_wall_s"] = [round(x["wall_s"], 2) for x in runs[k]]
        row["load_1min"] = [round(x["load_1min"], 2) for x in runs[k]]
        mine = numbers(reports[k])
        row["report_equal_to_first"] = reports[k] == reports[0]
        row["max_difference"] = max((abs(mine[p] - first[p]) for p in first), default=0.0)
    last = rows[-1]
    result = {
        "workload": "fmnpatch " + " ".join([*eval_args[:1], args.base, "PATCH", *eval_args[3:]]),
        "device": args.device,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "speedup_wall": {row["label"]: row["wall_s"] / last["wall_s"] for row in rows[:-1]},
        "speedup_draw": {
            row["label"]: row["draw_s"] / last["draw_s"]
            for row in rows[:-1]
            if row["draw_s"] and last["draw_s"]
        },
        "note": args.note,
    }
    save("scale" if args.device == "cpu" else "scale_gpu", result)
    write_markdown()


def scale_section() -> list[str]:
    """The BENCHMARKS.md section (called by bench/render.py's write_markdown)."""
    from record import provenance_line, read_result

    lines: list[str] = []
    for name, title in (("scale", "CPU"), ("scale_gpu", "GPU")):
        record = read_result(name)
        if not record:
            continue
        r = record["result"]
        lines += [f"## Evaluation on several processes ({title})", "", provenance_line(record), ""]
        lines += [
            f"`{r['workload']}` ({r['rows'][0]['images']} images), the whole command timed from outside, medians "
            f"of {r['repeats']} interleaved rounds on {r['cpu_count']} cores; drawing: the eval's own time for "
            "drawing and judging (no start-up).",
            "",
            "| run | wall (s) | drawing (s) | images/s | report vs first row | 1-min load at start |",
            "|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            same = "equal" if row["report_equal_to_first"] else f"differs by <= {row['max_difference']:.1e}"
            draw = f"{row['draw_s']:.1f}" if row["draw_s"] else "-"
            rate = f"{row['images_per_s']:.2f}" if row["images_per_s"] else "-"
            load = ", ".join(f"{x:.1f}" for x in row["load_1min"])
            lines.append(f"| {row['label']} | {row['wall_s']:.1f} | {draw} | {rate} | {same} | {load} |")
        last = r["rows"][-1]["label"]
        ratios = "; ".join(
            f"{label}: {v:.2f}x wall, {r['speedup_draw'].get(label, float('nan')):.2f}x drawing"
            for label, v in r["speedup_wall"].items()
        )
        lines += ["", f"Speed-up of {last} over {ratios}.", ""]
        if name == "scale":
            lines += [
                "Why the ratios are what they are: the processes split the batches, so the drawing alone can approach "
                f"{r['rows'][-1]['processes']}x on idle cores; the whole command gains less "
                "because every process pays its own start-up (imports, loading the base and the judge: the "
                "difference between the wall and drawing columns) and the main process alone writes the report. "
                f"On a machine shared with other jobs (the load column: tasks wanting a core, averaged over a minute, "
                f"for {r['cpu_count']} cores) "
                "the ratio also measures how much of the machine each run gets: the scheduler shares the cores "
                "between runnable threads, so two processes get more of a busy machine than one. One process "
                "with two threads is the slowest there: every operator is split between its two threads and "
                "waits for the slower half, which another job has often taken off its core.",
                "",
            ]
        if r.get("note"):
            lines += [r["note"], ""]
    if lines and not read_result("scale_gpu"):
        lines += [
            "GPU: not measured yet (no GPU on the machines these ran on). On a machine with several GPUs, "
            "`python bench/scale.py --device cuda` times the same eval on one GPU and on all of them, "
            "and `--base ./sd15 --bench real --clip MODEL` on a real checkpoint.",
            "",
        ]
    return lines


if __name__ == "__main__":
    main()
