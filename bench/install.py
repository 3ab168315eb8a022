"""How long a fresh clone takes to install from requirements.lock: uv (what `make install` runs) beside pip.

    python bench/install.py               # 3 rounds: each tool, warm and cold package cache, then `make demo` once
    python bench/install.py --rounds 1 --no-demo

Every run installs into a fresh clone of HEAD (so commit first) in a temporary folder. "Cold" gives the run an
empty cache folder of its own (UV_CACHE_DIR, PIP_CACHE_DIR); "warm" uses one shared cache that a first, untimed run
filled. torch's CPU wheel is read from this machine's disk in every run (pip's find-links); for the rest, cold
means uv downloads from PyPI, while pip also reads the machine's local mirror (pip.conf) where some wheels lie.
Rounds interleave the four variants; times are medians. Writes bench/results/install.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
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

#: The lock's set put into a fresh venv by each tool; both start as `make install` does (torch and uv by pip).
STEPS = {
    "uv": [
        "{venv}/bin/uv pip sync -q --python {venv}/bin/python requirements.lock",
        "{venv}/bin/uv pip install -q --python {venv}/bin/python --no-deps --no-build-isolation -e .",
    ],
    "pip": [
        "{venv}/bin/python -m pip install -q --no-deps -r requirements.lock",
        "{venv}/bin/python -m pip install -q --no-deps --no-build-isolation -e .",
    ],
}
BOOTSTRAP = [
    "python3 -m venv {venv}",
    "{venv}/bin/python -m pip install -q --no-deps $(grep -E '^(torch|uv)==' requirements.lock)",
]


def clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return dest


def run_install(tool: str, cache: Path, workdir: Path) -> float:
    """Seconds from an empty folder to the installed lock, bootstrap included, in a fresh clone."""
    repo = clone(workdir / "repo")
    env = {**os.environ, "UV_CACHE_DIR": str(cache / "uv"), "PIP_CACHE_DIR": str(cache / "pip")}
    venv = repo / ".venv"
    start = time.perf_counter()
    for step in BOOTSTRAP + STEPS[tool]:
        subprocess.run(step.format(venv=venv), shell=True, cwd=repo, env=env, check=True)
    seconds = time.perf_counter() - start
    check = subprocess.run(
        [str(venv / "bin/python"), "tests/lockfile.py"], cwd=repo, capture_output=True, text=True, check=True
    )
    if not check.stdout.startswith("0 packages differ"):
        raise SystemExit(f"{tool} did not install the lock:\n{check.stdout}")
    return seconds


def timed_make(target: str, cache: Path, workdir: Path) -> float:
    repo = clone(workdir / "repo")
    env = {**os.environ, "UV_CACHE_DIR": str(cache / "uv"), "PIP_CACHE_DIR": str(cache / "pip")}
    start = time.perf_counter()
    subprocess.run(["make", target], cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each variant (default 3)")
    parser.add_argument("--no-demo", action="store_true", help="skip the fresh-clone `make demo` timings")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: give 1 or more")
    from record import RESULTS, machine, write_json  # bench/record.py: provenance
    from render import write_markdown

    times: dict[str, list[float]] = {f"{tool}/{state}": [] for tool in STEPS for state in ("warm", "cold")}
    with tempfile.TemporaryDirectory(prefix="fmn-install-") as tmp:
        warm = Path(tmp) / "warm-cache"
        for tool in STEPS:  # fill the shared cache, untimed
            with tempfile.TemporaryDirectory(dir=tmp) as work:
                run_install(tool, warm, Path(work))
        for round_ in range(args.rounds):
            for key in times:
                tool, state = key.split("/")
                with tempfile.TemporaryDirectory(dir=tmp) as work:
                    cache = warm if state == "warm" else Path(work) / "cold-cache"
                    seconds = run_install(tool, cache, Path(work))
                times[key].append(round(seconds, 2))
                print(f"round {round_ + 1}: {key} {seconds:.1f} s", flush=True)
        demo: dict[str, float] = {}
        if not args.no_demo:
            for state in ("warm", "cold"):
                with tempfile.TemporaryDirectory(dir=tmp) as work:
                    cache = warm if state == "warm" else Path(work) / "cold-cache"
                    demo[state] = round(timed_make("demo", cache, Path(work)), 1)
                print(f"make demo on a fresh clone, {state} cache: {demo[state]:.1f} s", flush=True)
    rows = [
        {"variant": key, "median_s": statistics.median(values), "all_s": values}
        for key, values in times.items()
    ]
    record: dict[str, Any] = {
        "meta": machine() | {"command": "python bench/install.py " + shlex.join(sys.argv[1:])},
        "rows": rows,
        "demo_s": demo,
        "packages": sum(1 for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "install.json"
    write_json(out, record)
    write_markdown()
    print(out)


def install_section(read: Any, provenance: Any) -> list[str]:
    """BENCHMARKS.md's section, from bench/results/install.json."""
    record = read("install")
    if not record:
        return []
    by = {row["variant"]: row for row in record["rows"]}
    lines = ["## Install", "", provenance(record), ""]
    lines += [
        f"A fresh clone to the {record['packages']} locked packages: venv, torch's CPU wheel from this machine's "
        "disk and uv by pip, then the lock and the package by each tool. Cold: an empty package cache; warm: a "
        f"filled one. Medians of {len(record['rows'][0]['all_s'])} interleaved runs. uv reads PyPI; pip also reads "
        "this machine's local package mirror (its pip.conf), which holds some of the locked wheels, so a cold "
        "cache costs pip less than it would elsewhere.",
        "",
        "| tool | warm cache (s) | cold cache (s) |",
        "|---|---|---|",
    ]
    for tool in ("uv", "pip"):
        lines.append(
            f"| {tool} | {by[f'{tool}/warm']['median_s']:.1f} | {by[f'{tool}/cold']['median_s']:.1f} |"
        )
    lines += [
        "",
        f"uv / pip: {by['uv/warm']['median_s'] / by['pip/warm']['median_s']:.2f}x warm, "
        f"{by['uv/cold']['median_s'] / by['pip/cold']['median_s']:.2f}x cold.",
    ]
    if record.get("demo_s"):
        demo = record["demo_s"]
        lines += [
            "",
            f"`make demo` on a fresh clone, install included: {demo['warm']:.0f} s with a warm cache, "
            f"{demo['cold']:.0f} s with a cold one (one run each).",
        ]
    lines.append("")
    return lines


if __name__ == "__main__":
    main()
