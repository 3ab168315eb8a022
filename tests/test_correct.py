"""Concept correction: the prompt pairs, the patch it trains, determinism, the entropy measure, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from test_cli import run

from fmn_patch.errors import FmnPatchError
from fmn_patch.evaluation.correction import entropy_bits
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import apply_patches, remove_patches
from fmn_patch.families.unet import is_target
from fmn_patch.format import Patch
from fmn_patch.methods.correct import (
    CorrectConfig,
    attribute_variants,
    correct_patch,
    variant_pairs,
)

FAST = dict(steps=3, images_per_prompt=1, image_steps=2, batch_size=2, templates=("a {}",), bench="toy")
VARIANTS = ["red circle", "blue circle"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path_factory.getbasetemp() / "refcache"))


def test_variant_pairs_line_up_template_by_template():
    prompts, targets = variant_pairs("circle", VARIANTS, ["a {}", "a picture of a {}"])
    assert prompts == ["a circle", "a circle", "a picture of a circle", "a picture of a circle"]
    assert targets == [
        "a red circle",
        "a blue circle",
        "a picture of a red circle",
        "a picture of a blue circle",
    ]


def test_attribute_variants_come_from_the_bench():
    assert attribute_variants("circle", "colour", "toy") == [
        "red circle",
        "green circle",
        "blue circle",
        "yellow circle",
    ]
    with pytest.raises(FmnPatchError, match=r"no attribute 'size'.*--into"):
        attribute_variants("circle", "size", "toy")


def test_entropy_bits():
    assert entropy_bits([8, 8, 8, 8]) == pytest.approx(2.0)
    assert entropy_bits([32, 0, 0, 0]) == 0.0
    assert entropy_bits([]) == 0.0
    assert 0 < entropy_bits([31, 1, 0, 0]) < 1
    assert entropy_bits([1, 1]) == pytest.approx(math.log2(2))


def test_correct_patch_trains_attn2_kv_only_and_is_deterministic(sd1):
    config = CorrectConfig(**FAST)
    before = {k: v.clone() for k, v in sd1.pipe.unet.state_dict().items()}
    first = correct_patch(sd1, "circle", VARIANTS, config, progress=False)
    second = correct_patch(sd1, "circle", VARIANTS, config, progress=False)
    assert first.info.method == "correct" and first.concept_names == ["circle"]
    assert first.info.config["variants"] == VARIANTS
    assert first.factors and all(is_target(m) for m in first.factors)
    assert first.tensor_hash() == second.tensor_hash()  # same inputs and seed, same tensors
    assert any(float(b.abs().max()) > 0 for _, b in first.factors.values())  # it learned something
    after = sd1.pipe.unet.state_dict()
    assert set(after) == set(before) and all(
        torch.equal(before[k], after[k]) for k in before
    )  # left as it was


@pytest.mark.parametrize(
    ("variants", "config", "message"),
    [
        (["red circle"], {}, "at least two"),
        (["red circle", "blue square"], {}, r"do not contain the concept 'circle'"),
        (VARIANTS, {"templates": ("a circle",)}, r"one '\{\}'"),
        (VARIANTS, {"steps": 0}, "steps=0"),
    ],
)
def test_bad_input_is_one_clear_error(sd1, variants, config, message):
    with pytest.raises(FmnPatchError, match=message):
        correct_patch(sd1, "circle", variants, CorrectConfig(**{**FAST, **config}), progress=False)


def test_cli_correct(capsys, pipeline_dirs, tmp_path):
    out = tmp_path / "c.safetensors"
    base = str(pipeline_dirs["sd1"])
    code, _, err = run(capsys, "correct", "circle", "--base", base, "-o", str(out))
    assert code == 2 and "--into" in err and len(err.strip().splitlines()) == 1
    args = ["correct", "circle", "--attribute", "colour", "--bench", "toy", "--base", base, "-o", str(out)]
    args += ["--steps", "2"]
    args += ["--template", "a {}", "--json"]
    code, stdout, _ = run(capsys, *args)
    assert code == 0 and out.exists()
    assert '"variants"' in stdout and "yellow circle" in stdout
    code, _, err = run(capsys, *args)
    assert code == 2 and "--overwrite" in err
    pipe = load_base(base)  # the written patch is a correction of circle that applies to its base
    patch = Patch.load(out)
    assert patch.verified and patch.info.method == "correct" and patch.concept_names == ["circle"]
    remove_patches(pipe, apply_patches(pipe, [patch], strict=True))
