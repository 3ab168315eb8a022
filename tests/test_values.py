"""Numbers are checked where configs are built: non-finite, absurd and out-of-range values are refused with the
value and an example, property-tested over every float and large ints; ranks are capped or refused by the model."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import random_patch
from hypothesis import given
from hypothesis import strategies as st

from fmn_patch import values
from fmn_patch.attacks import AttackConfig, InversionAttackConfig, SearchConfig
from fmn_patch.errors import FmnPatchError
from fmn_patch.evaluation.mscore import SamplerConfig
from fmn_patch.evaluation.preview import SampleConfig
from fmn_patch.families.export import to_kohya
from fmn_patch.format import Patch, PatchInfo
from fmn_patch.format.merge import check_weights, merge_patches
from fmn_patch.methods.correct import CorrectConfig
from fmn_patch.methods.editor import EditConfig
from fmn_patch.methods.inversion import InversionConfig
from fmn_patch.methods.lora import check_rank
from fmn_patch.methods.resteer import TrainConfig

CONFIGS = [TrainConfig, EditConfig, CorrectConfig, SamplerConfig, SampleConfig, InversionConfig]
CONFIGS += [InversionAttackConfig, SearchConfig]
BAD_FLOATS = [math.nan, math.inf, -math.inf, 1e300, -1e300]
BAD_INTS = [-1, 2**70, True]


@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10), st.floats(10, 1e6))
def test_number_accepts_exactly_the_finite_values_in_range(x, low, high):
    ok = math.isfinite(x) and low <= x <= high
    try:
        assert values.number(x, "x", low, high) == x and ok
    except FmnPatchError as e:
        assert not ok and str(e).startswith("x=")


@given(st.integers(-(2**80), 2**80))
def test_seed_takes_64_bit_generator_seeds_only(n):
    ok = 0 <= n <= 2**63 - 1
    try:
        values.seed(n)
        assert ok
        torch.Generator().manual_seed(n)  # what every seed is used for
    except FmnPatchError:
        assert not ok


def _fields(config) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config) if f.type in ("int", "float", "float | None", "int | None")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_field_refuses_non_finite_and_absurd_values(config):
    checked = 0
    for f in _fields(config):
        bad = BAD_INTS if f.type.startswith("int") else BAD_FLOATS
        for value in bad:
            if value is True and f.type.startswith("float"):
                continue
            with pytest.raises(FmnPatchError, match=f.name):
                config(**{f.name: value})
            checked += 1
    assert checked >= 3, f"{config.__name__} has no numeric field checked"


def test_seeds_of_a_sampler_and_attack_are_checked():
    with pytest.raises(FmnPatchError, match="seed"):
        SamplerConfig(seeds=(0, 2**64))
    with pytest.raises(FmnPatchError, match="seeds=0"):
        SamplerConfig.first_seeds(0)
    with pytest.raises(FmnPatchError, match="seeds="):
        SamplerConfig.first_seeds(2**70)  # refused before 2**70 seeds are made
    with pytest.raises(FmnPatchError, match="attack seed"):
        AttackConfig(seed=-1)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_weights_are_finite_and_bounded(w):
    ok = math.isfinite(w) and abs(w) <= values.MAX_WEIGHT
    try:
        assert check_weights([object(), object()], [w]) == [w, w] and ok  # type: ignore[list-item]
    except FmnPatchError:
        assert not ok


def test_merge_and_from_deltas_cap_the_rank_at_min_in_out(sd1):
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    delta = torch.randn(8, 3) @ torch.randn(3, 6)
    patch, residuals = Patch.from_deltas({module: delta}, rank=100_000)
    assert patch.rank == 6 and residuals[module] < 1e-6  # exact at min(8, 6) = 6; not 100,000 zero rows
    a, b = random_patch(sd1, seed=1), random_patch(sd1, seed=2)
    with pytest.raises(FmnPatchError, match="rank=100000 must be a whole number from 1 to 4096"):
        merge_patches([a, b], rank=100_000)  # refused before any delta is formed
    merged, report = merge_patches([a, b], rank=4000)
    narrowest = min(min(s) for s in sd1.family.adapters.target_shapes().values())
    assert merged.rank == narrowest and report.total < 1e-5
    with pytest.raises(FmnPatchError, match="rank=0"):
        merge_patches([a, b], rank=0)


def test_training_refuses_a_rank_the_layers_cannot_use(sd1):
    narrowest = min(min(s) for s in sd1.family.adapters.target_shapes().values())
    check_rank(sd1, narrowest)
    with pytest.raises(FmnPatchError, match=rf"rank={narrowest + 1} is more .*min\(in, out\) = {narrowest}"):
        check_rank(sd1, narrowest + 1)


def test_kohya_names_never_collide_and_follow_the_patch(pipeline_dirs):
    from fmn_patch.families.base import load_base

    sdxl = load_base(str(pipeline_dirs["sdxl"]))
    patch = random_patch(sdxl)
    names = to_kohya(patch)[0]  # layers_per_block read from the module names
    assert names.keys() == to_kohya(patch, layers_per_block=2)[0].keys()
    for bad in (0, -1):
        with pytest.raises(FmnPatchError, match="layers_per_block"):
            to_kohya(patch, layers_per_block=bad)
    with pytest.raises(FmnPatchError, match="does not fit layers_per_block=1"):
        to_kohya(patch, layers_per_block=1)  # would give two blocks one name
    sd1 = random_patch(load_base(str(pipeline_dirs["sd1"])))
    with pytest.raises(FmnPatchError, match="layers_per_block"):
        to_kohya(sd1, layers_per_block=-1)  # checked for every architecture, not only SDXL


def test_steps_beyond_the_scheduler_are_refused(sd1):
    from fmn_patch.evaluation.preview import sample

    with pytest.raises(FmnPatchError, match="steps=1001 is more than"):
        sample(sd1, "a circle", [0], SampleConfig(steps=1001))


def test_a_patch_info_round_trips_unchanged():  # the schema reads back what the writer wrote
    from fmn_patch.format.header import write_header
    from fmn_patch.format.schema import info_from_header

    info = PatchInfo(
        method="edit", config={"a": [1, {"b": None}]}, results={"x": 0.5}, versions={"torch": "2"}
    )
    header = write_header(
        info,
        component="unet",
        projections=("to_k",),
        target_description="d",
        ranks={"m": 2},
        tensor_digest="0" * 64,
        spec_hash="0x" + "0" * 64,
    )
    back = info_from_header(header)
    assert back.config == info.config and back.results == info.results and back.method == "edit"
