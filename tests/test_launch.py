"""Two real processes under `accelerate launch`: the eval report equals one process's, and `train --each`
writes the patches one process writes one at a time, and survives a killed process with --resume.

On a machine without a GPU, `accelerate launch --multi_gpu --num_processes 2` is how accelerate starts two CPU
processes (torchrun underneath; `--cpu` alone starts one unless MPI is set up). Both sides run one torch thread:
the report is guaranteed identical for the same batches and the same threads per process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import random_patch
from test_cli import run

from fmn_patch.families.base import load_base
from fmn_patch.format import Patch
from fmn_patch.methods.each import read_manifest
from fmn_patch.toy.paths import toy_judge_path

pytestmark = pytest.mark.skipif(not toy_judge_path().exists(), reason="toy judge not built (make toy-model)")
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(*args: str, processes: int = 2) -> subprocess.Popen[str]:
    """``accelerate launch ... -m fmn_patch ARGS`` on the CPU, running this checkout, one torch thread each."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        *(
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
        ),
        *("--num_cpu_threads_per_process", "1", "--main_process_port", str(_free_port())),
        *("-m", "fmn_patch", *args),
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_eval_on_two_processes_equals_one(capsys, tmp_path):
    toy = load_base("toy")
    patch = random_patch(toy, concept="circle").save(tmp_path / "circle.safetensors")
    args = ["eval", "toy", str(patch), "--steps", "2", "--seeds", "1", "--batch-size", "4"]
    args += ["--concept", "circle", "--concept", "bob", "--concept", "square", "--json"]
    proc = launch(*args, "--output", str(tmp_path / "two"))
    code, out, _ = run(capsys, *args, "--output", str(tmp_path / "one"))  # meanwhile, one process here
    assert code == 0
    code, two_out, err = finish(proc)
    assert code == 0, err[-3000:]
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two == one and json.loads(two_out) == json.loads(out)  # printed once, by the main process only
    assert (tmp_path / "two" / "grid.png").read_bytes() == (tmp_path / "one" / "grid.png").read_bytes()
    assert "process 0: 43 (50%), process 1: 43 (50%)" in err  # 2 models x (3 concepts' prompts + grid)


def test_train_each_on_two_processes_survives_a_killed_process(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path / "cache"))  # the launched processes inherit it
    concepts = ["circle", "square", "bob", "striped"]
    names = tmp_path / "names.txt"
    names.write_text("\n".join(concepts) + "\n")
    options = ["--steps", "5"]
    folder = tmp_path / "each"
    proc = launch("train", "--from-file", str(names), "--each", *options, "-o", str(folder))
    # process 1 has bob then striped: kill it the moment bob is recorded, in the middle of striped
    deadline = time.monotonic() + 300
    while not any(e["process"] == 1 for e in read_manifest(folder)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    assert len(workers) == 1
    os.kill(workers[0].pid, signal.SIGKILL)
    code, _, _ = finish(proc)
    assert code != 0  # the launcher stops the other process too
    assert not list(folder.glob(".*.tmp")), "a stopped process leaves no partial file"
    before = {e["concept"]: (folder / e["output"]).stat().st_mtime_ns for e in read_manifest(folder)}
    assert "bob" in before and "striped" not in before

    code, out, err = run(capsys, "train", "--from-file", str(names), "--each", *options, "-o", str(folder))
    assert code == 2 and "--resume" in err  # a rerun without --resume refuses to touch the folder
    code, out, _ = run(
        capsys, "train", "--from-file", str(names), "--each", *options, "-o", str(folder), "--resume"
    )
    assert code == 0
    made = {Path(line).name.removeprefix("forget-").removesuffix(".safetensors") for line in out.split()}
    assert "striped" in made and not made & set(before)  # only what was missing
    lines = read_manifest(folder)
    assert sorted(e["concept"] for e in lines if e["status"] == "done") == sorted(concepts)  # none made twice
    assert {c: (folder / f"forget-{c}.safetensors").stat().st_mtime_ns for c in before} == before
    for c in concepts:  # the same tensors as one at a time (from the pictures the processes cached), ...
        code, _, err = run(
            capsys, "train", c, *options, "-o", str(tmp_path / "one" / f"forget-{c}.safetensors")
        )
        assert code == 0, err
        one = Patch.load(tmp_path / "one" / f"forget-{c}.safetensors")
        each = Patch.load(folder / f"forget-{c}.safetensors")
        assert all(torch.equal(one.factors[m][i], each.factors[m][i]) for m in one.factors for i in (0, 1)), c
        assert (
            one.info.extra["final_loss"] == each.info.extra["final_loss"]
        )  # ... whichever process made them


@pytest.mark.slow
def test_train_each_two_processes_make_the_same_patches(capsys, tmp_path, monkeypatch):
    """Every patch made by the two processes (none killed) equals the one made alone."""
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path / "cache"))
    concepts = ["circle", "square", "bob", "striped"]
    names = tmp_path / "names.txt"
    names.write_text("\n".join(concepts) + "\n")
    for c in concepts:
        code, _, _ = run(capsys, "train", c, "--steps", "5", "-o", str(tmp_path / "one" / f"{c}.safetensors"))
        assert code == 0
    folder = tmp_path / "each"
    code, out, err = finish(
        launch("train", "--from-file", str(names), "--each", "--steps", "5", "-o", str(folder), "--json")
    )
    assert code == 0, err[-3000:]
    data = json.loads(out)
    assert data["throughput"]["per_process"] == [2, 2]
    for c in concepts:
        one = Patch.load(tmp_path / "one" / f"{c}.safetensors")
        each = Patch.load(folder / f"forget-{c}.safetensors")
        assert all(torch.equal(one.factors[m][i], each.factors[m][i]) for m in one.factors for i in (0, 1)), c


@pytest.mark.slow
def test_attack_on_two_processes_equals_one(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path / "cache"))
    toy = load_base("toy")
    patch = random_patch(toy, concept="circle").save(tmp_path / "circle.safetensors")
    args = ["attack", "toy", str(patch), "--concept", "circle", "--steps", "2", "--seeds", "1"]
    args += ["--inversion-steps", "3", "--inversion-images", "4", "--search-candidates", "8", "--json"]
    code, out, _ = run(capsys, *args, "--out", str(tmp_path / "one"))
    assert code == 0
    code, two_out, err = finish(launch(*args, "--out", str(tmp_path / "two")))
    assert code == 0, err[-3000:]

    def numbers(obj):
        if isinstance(obj, dict):
            return {k: numbers(v) for k, v in obj.items() if "seconds" not in k}
        if isinstance(obj, list):
            return [numbers(v) for v in obj]
        return obj

    assert numbers(json.loads(two_out)) == numbers(json.loads(out))
