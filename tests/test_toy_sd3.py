"""The committed toy MMDiT (`toy-sd3`) at the CLI: trained by name, evaluated with the UNet toy's JSON names."""

from __future__ import annotations

import json

import pytest
from test_cli import run

from fmn_patch.families.base import load_base
from fmn_patch.families.sd3 import SD3Family
from fmn_patch.toy.paths import toy_judge_path, toy_sd3_pipeline_path

pytestmark = pytest.mark.skipif(
    not (toy_sd3_pipeline_path() / "model_index.json").exists() or not toy_judge_path().exists(),
    reason="toy-sd3 not built (make toy-sd3)",
)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path_factory.getbasetemp() / "refcache"))


def _names(model: dict) -> set[str]:
    return set(model) | {f"concepts.{k}" for c in model["concepts"].values() for k in c}


def test_toy_sd3_by_name_and_by_path_is_the_same_world():
    by_name, by_path = load_base("toy-sd3"), load_base(str(toy_sd3_pipeline_path()))
    assert isinstance(by_name.family, SD3Family)
    assert by_name.world is by_path.world and by_name.bench == "toy"
    assert by_name.architecture == by_path.architecture == "fmn-toy-sd3"
    assert load_base("toy").world is not by_name.world  # the UNet toy is its own world entry


def test_train_by_name_then_eval_json_with_the_unet_toys_names(capsys, tmp_path):
    patch = tmp_path / "forget-circle.safetensors"
    code, out, err = run(
        capsys, "train", "circle", "--base", "toy-sd3", "--steps", "3", "-o", str(patch), "--json"
    )
    assert code == 0, err
    assert json.loads(out)["output"] == str(patch)
    common = ["--seeds", "1", "--steps", "2", "--concept", "circle", "--concept", "bob", "--json"]
    code, out, err = run(capsys, "eval", "toy-sd3", str(patch), "-o", str(tmp_path / "sd3"), *common)
    assert code == 0, err
    sd3 = json.loads(out)
    code, out, err = run(capsys, "eval", "toy", "-o", str(tmp_path / "unet"), *common)
    assert code == 0, err
    unet = json.loads(out)
    assert set(sd3) == set(unet)
    assert sd3["models"][0]["name"] == "base" and sd3["models"][1]["erased"] == ["circle"]
    assert _names(sd3["models"][1]) == _names(sd3["models"][0])
    assert _names(sd3["models"][0]) == _names(unet["models"][0])
