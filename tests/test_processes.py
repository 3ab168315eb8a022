"""Shared work, in one process: the split between processes, batches that depend on nothing but themselves, the
manifest of --each and its resume, and the CLI's rules. The launches of several processes are in test_launch.py."""

from __future__ import annotations

import json
import multiprocessing
import random
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

import pytest
import torch
from conftest import random_patch
from test_cli import run

from fmn_patch import processes
from fmn_patch.concepts.bench import load_bench
from fmn_patch.errors import FmnPatchError
from fmn_patch.evaluation.batches import run_batches
from fmn_patch.evaluation.mscore import SamplerConfig, score_batches, score_groups
from fmn_patch.families.stack import apply_patches, remove_patches
from fmn_patch.files import append_line
from fmn_patch.format import Patch
from fmn_patch.methods.each import MANIFEST, EachConfig, build_each, finished, patch_name, read_manifest
from fmn_patch.processes import Processes, run_shared
from fmn_patch.toy.judge import ToyJudge
from fmn_patch.toy.paths import toy_judge_path


def test_every_unit_goes_to_exactly_one_process_in_contiguous_shares():
    from accelerate import PartialState

    for n in range(0, 23):
        for count in range(1, 6):
            shares = []
            for index in range(count):  # accelerate's own split, as each process of `count` would run it
                state = SimpleNamespace(num_processes=count, process_index=index)

                def split(items, state=state):
                    return PartialState.split_between_processes(state, items)  # type: ignore[arg-type]

                shares.append(
                    Processes(count, index, index, SimpleNamespace(split_between_processes=split)).share(n)
                )
            assert [i for share in shares for i in share] == list(range(n)), (n, count)
            sizes = [len(s) for s in shares]
            assert max(sizes) - min(sizes) <= 1


def test_run_shared_alone_is_a_plain_loop_with_a_throughput():
    units = list(range(7))
    results, throughput = run_shared(units, lambda u: u * u, size=lambda u: u, what="squares", unit="images")
    assert results == [u * u for u in units]
    assert throughput.per_process == [sum(units)] and throughput.total == 21
    assert throughput.line().startswith("squares: 21 images in ")
    assert Processes().device("cuda") == "cuda"  # one process: the device as asked


def test_a_cpu_launch_that_started_one_process_says_so(monkeypatch, capsys):
    for name in processes.SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    assert processes._detect() == Processes()
    assert "--multi_gpu --num_processes N" in capsys.readouterr().err
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")  # mpirun's variable counts too
    assert processes.launched_size() == 1


@pytest.mark.skipif(not toy_judge_path().exists(), reason="toy judge not built (make toy-model)")
def test_a_batch_depends_on_nothing_but_itself(sd1):
    """What makes a report independent of the number of processes: every process draws a contiguous share of the
    batches, so each batch must give the same result whatever was drawn before it, on whichever model state."""
    bench, judge = load_bench("toy"), ToyJudge.load()
    sampler = SamplerConfig(steps=2, guidance=3.0, seeds=(0,), batch_size=3)
    groups = score_groups(bench, [bench.concept(n) for n in ("circle", "bob")])
    patch = random_patch(sd1, concept="circle")

    @contextmanager
    def stacked():
        names = apply_patches(sd1, [patch])
        try:
            yield names
        finally:
            remove_patches(sd1, names)

    states = {"base": nullcontext, "patched": stacked}
    work = score_batches(groups, sampler, "base") + score_batches(groups, sampler, "patched")
    together, throughput = run_batches(sd1, work, judge, states, progress=False)
    assert throughput.total == sum(len(b.jobs) for b in work) and len(together) == len(work) >= 10
    order = list(range(len(work)))
    random.Random(0).shuffle(order)
    for k in order[:5]:  # any batch alone, after others in another order, on the other state
        [alone], _ = run_batches(sd1, [work[k]], judge, states, progress=False)
        assert alone.probs == together[k].probs and alone.hits == together[k].hits
    base_probs = [p for r, b in zip(together, work, strict=True) if b.model == "base" for p in r.probs]
    patched_probs = [p for r, b in zip(together, work, strict=True) if b.model == "patched" for p in r.probs]
    assert base_probs != patched_probs  # the states really differ
    assert not sd1.family.adapters.adapter_names(), "the pipeline is left unpatched"


# ------------------------------------------------------------------------------------------ the manifest
def _append_many(path: str, tag: int) -> None:
    for i in range(200):
        append_line(path, json.dumps({"tag": tag, "i": i, "pad": "x" * 300}))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_appends_from_several_processes_never_interleave(tmp_path):
    path = tmp_path / "log.jsonl"
    ctx = multiprocessing.get_context("fork")  # the workers only append: no torch in them
    workers = [ctx.Process(target=_append_many, args=(str(path), tag)) for tag in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((e["tag"], e["i"]) for e in lines) == [(t, i) for t in range(3) for i in range(200)]
    with pytest.raises(ValueError):
        append_line(path, "two\nlines")


def _maker(pipe, calls: list[str], fail: tuple[str, ...] = ()):
    def make(concept: str) -> Patch:
        calls.append(concept)
        if concept in fail:
            raise FmnPatchError(f"cannot forget {concept}")
        return random_patch(pipe, seed=len(concept), concept=concept)

    return make


def test_each_writes_patches_and_a_manifest_then_resumes_without_redoing(sd1, tmp_path):
    folder = tmp_path / "out"
    calls: list[str] = []
    names = ["circle", "bob=robert", "square", "star"]
    report = build_each(names, _maker(sd1, calls, fail=("square",)), EachConfig(folder, progress=False))
    assert calls == names and [e["concept"] for e in report.failed] == ["square"]
    assert "cannot forget square" in report.failed[0]["error"]
    assert (folder / patch_name("bob=robert")).name == "forget-bob.safetensors"
    lines = read_manifest(folder)
    assert [(e["concept"], e["status"]) for e in lines] == [
        ("circle", "done"),
        ("bob=robert", "done"),
        ("square", "failed"),
        ("star", "done"),
    ]
    assert lines[0]["metrics"]["rank"] == 2 and lines[0]["metrics"]["bytes"] > 0
    assert finished(folder) == {"circle", "bob=robert", "star"}
    made = Patch.load(folder / "forget-circle.safetensors")
    assert all(made.factors[m][0].equal(a) for m, (a, _) in random_patch(sd1, seed=6).factors.items())

    with pytest.raises(FmnPatchError, match="--resume"):
        build_each(names, _maker(sd1, []), EachConfig(folder, progress=False))
    stamp = (folder / "forget-star.safetensors").stat().st_mtime_ns
    (folder / "forget-star.safetensors").unlink()  # a recorded patch that went missing is made again
    (folder / "forget-square.safetensors").write_bytes(b"not recorded")  # an unrecorded file is replaced
    with (folder / MANIFEST).open("a") as f:
        f.write('{"concept": "circle", "sta')  # a line torn by a crash
    calls.clear()
    again = build_each(names, _maker(sd1, calls), EachConfig(folder, resume=True, progress=False))
    assert calls == ["square", "star"] and sorted(again.skipped) == ["bob=robert", "circle"]
    assert not again.failed and finished(folder) == set(names)
    Patch.load(folder / "forget-square.safetensors")
    assert (folder / "forget-star.safetensors").stat().st_mtime_ns != stamp
    assert json.loads(json.dumps(again.to_dict()))["throughput"]["total"] == 2


def test_each_refuses_what_it_cannot_name(sd1, tmp_path):
    with pytest.raises(FmnPatchError, match="listed twice"):
        build_each(["circle", "circle"], _maker(sd1, []), EachConfig(tmp_path, progress=False))
    with pytest.raises(FmnPatchError, match=r"both make forget-elon-musk\.safetensors"):
        build_each(["Elon Musk", "elon-musk"], _maker(sd1, []), EachConfig(tmp_path, progress=False))
    with pytest.raises(FmnPatchError, match="contradict"):
        EachConfig(tmp_path, resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FmnPatchError, match="is a file"):
        EachConfig(tmp_path / "file")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "circle", "--resume"], "add --each"),
        (["train", "circle", "--each", "--ti"], "--each does not combine with --ti"),
        (["train", "circle", "--each", "--preset", "nsfw"], "--each does not combine with --preset"),
        (["train", "circle", "bob", "--each", "--category", "obj", "--category", "id"], "one --category"),
        (["edit", "circle", "--resume"], "add --each"),
        (["edit", "--each", "--preset", "nsfw"], "--each does not combine with --preset"),
    ],
)
def test_each_cli_mistakes_are_one_line(capsys, args, message):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1


def test_edit_each_makes_what_one_edit_makes(capsys, pipeline_dirs, tmp_path):
    base = str(pipeline_dirs["sd1"])
    names = tmp_path / "names.txt"
    names.write_text("circle=disc\n# a comment\n\nbob\n")
    folder = tmp_path / "each"
    common = ["--base", base, "--bench", "toy", "--rank", "2"]
    code, out, _ = run(
        capsys, "edit", "--from-file", str(names), "--each", "-o", str(folder), *common, "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert [e["concept"] for e in data["made"]] == ["circle=disc", "bob"] and data["failed"] == []
    for concept, file in (("circle=disc", "forget-circle.safetensors"), ("bob", "forget-bob.safetensors")):
        code, _, _ = run(capsys, "edit", concept, "-o", str(tmp_path / file), *common)
        assert code == 0
        one, each = Patch.load(tmp_path / file), Patch.load(folder / file)
        assert one.factors.keys() == each.factors.keys()
        assert all(torch.equal(one.factors[m][i], each.factors[m][i]) for m in one.factors for i in (0, 1))
    code, _, err = run(capsys, "edit", "--from-file", str(names), "--each", "-o", str(folder), *common)
    assert code == 2 and "--resume" in err
    code, out, _ = run(
        capsys, "edit", "--from-file", str(names), "--each", "-o", str(folder), *common, "--resume"
    )
    assert code == 0 and out == ""  # nothing left to make
    assert len(read_manifest(folder)) == 2
