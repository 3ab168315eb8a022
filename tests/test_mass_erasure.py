"""bench/mass_erasure.py: its draws, roles and H-score, and one tiny run of the closed-form methods and MACE end to
end on a toy pipeline trained for a few steps (the numbers mean nothing; the run, the roles and the file are
checked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fmn_patch.concepts.bench import bench_from_dict
from fmn_patch.toy import world

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))  # bench/ is no package of the install; last on the path, it shadows nothing

import mass_erasure  # noqa: E402
import mass_erasure_report  # noqa: E402

TOY = bench_from_dict(world.bench())


@given(st.floats(0, 1), st.floats(0, 1))
def test_h_score_is_the_harmonic_mean_of_efficacy_and_kept(erased, kept):
    h = mass_erasure.h_score(erased, kept)
    efficacy = 1 - erased
    assert min(efficacy, kept) - 1e-12 <= h <= max(efficacy, kept) + 1e-12
    if efficacy == kept:
        assert h == pytest.approx(kept)
    assert mass_erasure.h_score(1.0, kept) == 0.0  # nothing forgotten scores 0, however much is kept


@pytest.mark.parametrize("size", [1, 5, 50, 96])
def test_draws_are_seeded_distinct_identities_the_same_for_every_call(size):
    first = mass_erasure.draws(TOY, size, 3)
    assert first == mass_erasure.draws(TOY, size, 3)
    people = {c.name for c in TOY.concepts if c.category == "identity"}
    for drawn in first:
        assert len(drawn) == len(set(drawn)) == size and set(drawn) <= people
    with pytest.raises(SystemExit, match="at most 96"):
        mass_erasure.draws(TOY, 97, 1)


def _world() -> mass_erasure.World:
    data = world.bench()
    return mass_erasure.World("", TOY, "", None, None, None, data["neighbours"])  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [1, 10, 50])
def test_the_roles_of_a_run_are_disjoint_and_neighbours_are_one_attribute_away(size):
    erased = mass_erasure.draws(TOY, size, 1)[0]
    sets = mass_erasure.scored_sets(_world(), erased, 24, "x")
    names = [n for role in sets.values() for n in role]
    assert len(names) == len(set(names))
    looks = world.bench()["looks"]
    for n in sets["neighbours"]:
        assert any(sum(looks[n][k] != looks[e][k] for k in looks[n]) == 1 for e in erased)
    assert len(sets["others"]) <= 24 and len(sets["objects"]) == 16 and len(sets["styles"]) == 6


def test_summary_means_over_draws_and_takes_the_max_of_the_max():
    rows = [
        {"method": "edit", "n": 5, "erased": [], "acc_erased": 0.1, "acc_erased_max": 0.2, "alias": None},
        {"method": "edit", "n": 5, "erased": [], "acc_erased": 0.3, "acc_erased_max": 0.6, "alias": 0.5},
    ]
    (line,) = mass_erasure.summary(rows)
    assert line["draws"] == 2 and line["acc_erased"] == pytest.approx(0.2)
    assert line["acc_erased_max"] == 0.6 and line["alias"] == 0.5


def test_a_bench_without_neighbours_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="lists no identity neighbours"):
        mass_erasure.main(["--bench", "real", "--results", str(tmp_path)])


@pytest.mark.slow
def test_a_tiny_run_of_the_closed_form_methods_end_to_end(tmp_path):
    from fmn_patch.toy.judge import ToyJudge, ToyJudgeNet
    from fmn_patch.toy.train import TrainConfig, train

    pipeline = tmp_path / "pipe"
    train(TrainConfig(out=pipeline, state=tmp_path / "s", images=96, vae_steps=1, unet_steps=2))
    torch.manual_seed(0)
    ToyJudge(ToyJudgeNet()).save(tmp_path / "judge.safetensors")
    args = ["--pipeline", str(pipeline), "--judge", str(tmp_path / "judge.safetensors")]
    args += ["--draws", "1", "--seeds", "1", "--steps", "1", "--others", "4", "--results", str(tmp_path)]
    mass_erasure.main([*args, "--sizes", "1", "--methods", "edit", "uce"])
    first = json.loads((tmp_path / "mass_erasure.json").read_text())["result"]
    # resumed with more sizes and methods: the finished rows and the base's scores are kept, not redone
    mass_erasure.main([*args, "--sizes", "1", "3", "--methods", "edit", "uce", "speed", "mace", "--resume"])
    result = json.loads((tmp_path / "mass_erasure.json").read_text())["result"]
    assert result["complete"] and result["base"] == first["base"] and result["rows"][:2] == first["rows"]
    assert [(r["method"], r["n"]) for r in result["summary"]] == [
        (m, n) for n in (1, 3) for m in ("edit", "uce", "speed", "mace")
    ]
    for row in result["rows"]:
        assert 0 <= row["acc_erased"] <= row["acc_erased_max"] <= 1 and 0 <= row["h_score"] <= 1
        assert row["patch_bytes"] > 0 and row["seconds"] > 0
    # an edit variant added by a third run: its rows after the edit's, each run's record kept with its rows
    mass_erasure.main([*args, "--sizes", "1", "--methods", "edit", "--erase-weights", "2", "--resume"])
    record = json.loads((tmp_path / "mass_erasure.json").read_text())
    result = record["result"]
    assert [(r["method"], r["n"]) for r in result["summary"]][:3] == [
        (m, 1) for m in ("edit", "edit w=2", "uce")
    ]
    assert [r.get("run", 0) for r in result["rows"]] == [0, 0, 1, 1, 1, 1, 1, 1, 2]
    assert len(record["runs"]) == 3 and record["meta"] == record["runs"][-1]
    mass_erasure.main(
        [*args, "--sizes", "1", "--methods", "edit", "--resume"]
    )  # nothing to do: no new record
    assert len(json.loads((tmp_path / "mass_erasure.json").read_text())["runs"]) == 3
    section = "\n".join(
        mass_erasure_report.mass_erasure_section(lambda _: record, lambda r: r["meta"]["command"])
    )
    assert "| 1 | edit w=2 (3) |" in section and section.count("- (") == 3
    # --redo: the edit's rows made again by a fourth run, the others kept, and the rank curve of the file too (a
    # run without N = 50 makes none)
    record["result"]["rank_curve"] = curve = {"concepts": 50, "fixed": [], "auto": []}
    (tmp_path / "mass_erasure.json").write_text(json.dumps(record))
    mass_erasure.main([*args, "--sizes", "1", "--methods", "edit", "--redo", "edit", "--resume"])
    record = json.loads((tmp_path / "mass_erasure.json").read_text())
    runs = {(r["method"], r["n"]): r.get("run", 0) for r in record["result"]["rows"]}
    assert runs[("edit", 1)] == 3 and runs[("edit w=2", 1)] == 2 and runs[("uce", 1)] == 0
    assert len(record["runs"]) == 4 and len(record["result"]["rows"]) == 9
    assert record["result"]["rank_curve"] == curve
    with pytest.raises(SystemExit, match="--resume: sampler differ"):
        mass_erasure.main([*args, "--steps", "2", "--resume"])


def test_resume_without_a_run_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="does not exist; run without --resume"):
        mass_erasure.main(["--resume", "--results", str(tmp_path)])


@pytest.mark.parametrize("text", ["{not json", "[]", '{"result": {"rows": []}}', "\udcff"], ids=str)
def test_resume_from_a_damaged_results_file_is_refused(tmp_path, text):
    (tmp_path / "mass_erasure.json").write_text(text, errors="surrogateescape")
    with pytest.raises(SystemExit, match=r"is not a results file of this bench .*; move it aside"):
        mass_erasure.main(["--resume", "--results", str(tmp_path)])


def test_a_refusal_is_one_line_and_exit_2(tmp_path):
    import subprocess

    (tmp_path / "mass_erasure.json").write_text("{not json")
    script = Path(mass_erasure.__file__)
    done = subprocess.run(
        [sys.executable, str(script), "--resume", "--results", str(tmp_path)], capture_output=True, text=True
    )
    lines = [line for line in done.stderr.splitlines() if not line.startswith("[transformers]")]
    assert (
        done.returncode == 2 and len(lines) == 1 and lines[0].startswith("mass_erasure.py: error: --resume:")
    )
    assert (tmp_path / "mass_erasure.json").read_text() == "{not json"  # nothing overwritten
