"""Every script in bench/ answers ``--help`` with its usage and writes nothing (issue 28: bench/ under the rules that
hold the library): run in one fresh process, as ``python bench/X.py --help`` runs it, so that a script that ignores
``--help`` and starts its bench fails here instead of overwriting a results file."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"

# Runs each script as __main__ with --help, in this one process (bench/ on the path, as when a script is run), and
# prints {script: [exit code or error, first line of its output]}.
DRIVER = """
import contextlib, io, json, runpy, sys
from pathlib import Path
bench = Path(sys.argv[1])
sys.path.insert(0, str(bench))
out = {}
for path in sorted(bench.glob("*.py")):
    sys.argv = [str(path), "--help"]
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            runpy.run_path(str(path), run_name="__main__")
        code = "ran"
    except SystemExit as e:
        code = e.code
    except Exception as e:
        code = f"{type(e).__name__}: {e}"
    out[path.name] = [code, (text.getvalue().strip().splitlines() or [""])[0]]
print(json.dumps(out))
"""


def _results() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((BENCH / "results").glob("*"))}


def test_every_bench_script_answers_help_and_writes_nothing():
    before, markdown = _results(), (BENCH.parent / "BENCHMARKS.md").read_bytes()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(BENCH)], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    scripts = {p.name for p in BENCH.glob("*.py") if 'if __name__ == "__main__":' in p.read_text()}
    assert scripts and scripts <= set(answers)
    for name in sorted(scripts):
        code, first = answers[name]
        assert code == 0 and first.startswith("usage:"), f"bench/{name} --help: {code!r}, {first!r}"
    for name in sorted(set(answers) - scripts):  # the renderer's modules: imported, nothing run
        assert answers[name][0] == "ran", f"bench/{name}: {answers[name][0]!r}"
    assert _results() == before and (BENCH.parent / "BENCHMARKS.md").read_bytes() == markdown


def test_the_readmes_mass_erasure_table_is_the_results_file():
    """README's table is bench/mass_erasure_report.py's rendering of bench/results/mass_erasure.json (rerun
    `python bench/mass_erasure_report.py` after the bench)."""
    sys.path.insert(0, str(BENCH))
    try:
        from mass_erasure_report import README_END, README_START, readme_table
    finally:
        sys.path.remove(str(BENCH))
    text = (BENCH.parent / "README.md").read_text()
    drawn = text[text.index(README_START) + len(README_START) : text.index(README_END)]
    record = json.loads((BENCH / "results" / "mass_erasure.json").read_text())
    assert drawn == readme_table(record) + "\n"
