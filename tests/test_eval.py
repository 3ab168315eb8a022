"""fmnpatch eval: the report's stable names, stacking in the patched model, and its files."""

from __future__ import annotations

import json

import pytest
from conftest import random_patch
from test_cli import run

from fmn_patch.concepts.bench import load_bench
from fmn_patch.errors import FmnPatchError
from fmn_patch.evaluation import evaluate_patches, write_report
from fmn_patch.evaluation.mscore import SamplerConfig
from fmn_patch.families.base import load_base
from fmn_patch.toy.judge import ToyJudge

FAST = SamplerConfig(steps=2, guidance=3.0, seeds=(0,))


def test_report_names_are_stable(pipeline_dirs, tmp_path):
    pipe = load_base(str(pipeline_dirs["sd1"]))
    bench = load_bench("toy")
    patch = random_patch(pipe, concept="circle")
    report = evaluate_patches(
        pipe,
        [patch],
        bench,
        ToyJudge.load(),
        FAST,
        patch_names=["p.safetensors"],
        concepts=["circle", "square", "bob"],
    )
    data = report.to_dict()
    base, patched = data["models"]
    assert base["name"] == "base" and base["patches"] == [] and base["erased"] == []
    assert patched["patches"] == ["p.safetensors"] and patched["erased"] == ["circle"]
    for model in (base, patched):
        assert set(model["concepts"]) == {"circle", "square", "bob"}
        circle = model["concepts"]["circle"]
        assert {"category", "m_score", "acc", "alias_acc"} <= set(circle)
        assert "alias_acc" not in model["concepts"]["square"]
        scored = [n for n in model["concepts"] if n not in model["erased"]]
        assert model["acc_kept"] == pytest.approx(
            sum(model["concepts"][n]["acc"] for n in scored) / len(scored)
        )
    assert data["kept"] == ["square", "bob"]
    kept = [patched["concepts"][n]["acc"] for n in ("square", "bob")]
    assert patched["acc_kept"] == pytest.approx(sum(kept) / 2)
    assert not (getattr(pipe.pipe.unet, "peft_config", None) or {}), "eval leaves the pipeline unpatched"
    paths = write_report(report, tmp_path / "r")
    assert json.loads(paths["json"].read_text())["models"][1]["erased"] == ["circle"]
    assert "| circle (erased) |" in paths["markdown"].read_text()
    assert paths["grid"].exists()


def test_unknown_erased_concept_is_refused(sd1):
    patch = random_patch(sd1, concept="zebra")
    with pytest.raises(FmnPatchError, match="zebra"):
        evaluate_patches(sd1, [patch], load_bench("toy"), ToyJudge.load(), FAST)


def test_eval_cli_json(capsys, pipeline_dirs, tmp_path):
    code, out, _ = run(
        capsys,
        "eval",
        str(pipeline_dirs["sd1"]),
        "--bench",
        "toy",
        "--seeds",
        "1",
        "--steps",
        "2",
        "--concept",
        "circle",
        "--concept",
        "bob",
        "-o",
        str(tmp_path / "e"),
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert [m["name"] for m in data["models"]] == ["base"] and set(data["models"][0]["concepts"]) == {
        "circle",
        "bob",
    }
    code, _, err = run(capsys, "eval", str(pipeline_dirs["sd1"]), "--bench", "toy", "-o", str(tmp_path / "e"))
    assert code == 2 and "--overwrite" in err
    code, _, err = run(
        capsys, "eval", str(pipeline_dirs["sd1"]), "--bench", "real", "-o", str(tmp_path / "f")
    )
    assert code == 2 and "--clip" in err
