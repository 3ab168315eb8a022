"""The default training budget follows the start: the UNet's (from the closed-form edit) is what it always was, a
family without a closed form (SD3/Flux, from zero) gets the budget measured to forget on toy-sd3; what a caller
gives is kept."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import load_base
from fmn_patch.methods.budget import FROM_EDIT, FROM_ZERO, ROBUST, budget_for, resolved, spent
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.methods.samples import ZERO_START_SAMPLES

CHEAP = dict(images_per_prompt=1, image_steps=2)
UNET = dict(CHEAP, bench="toy")  # the tiny vocab knows circle


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path_factory.getbasetemp() / "refcache"))


def test_the_budget_follows_the_start():
    assert budget_for(True) == FROM_EDIT == spent(resolved(TrainConfig(), True))
    assert budget_for(False) == FROM_ZERO == spent(resolved(TrainConfig(), False))
    assert FROM_ZERO.steps * FROM_ZERO.batch_size >= ZERO_START_SAMPLES  # the default from zero never warns
    assert FROM_ZERO.pool > FROM_EDIT.pool and FROM_EDIT.preserve_weight is None
    assert (
        FROM_ZERO.steps * FROM_ZERO.batch_size > FROM_EDIT.steps * FROM_EDIT.batch_size
    )  # from zero needs more
    with pytest.raises(FmnPatchError, match="not resolved"):
        spent(TrainConfig())


def test_robust_runs_get_the_robust_budget_on_a_unet_and_the_zero_start_one_elsewhere():
    robust = TrainConfig(robust_rounds=4)
    assert budget_for(True, robust=True) == ROBUST == spent(resolved(robust, True))
    assert (
        budget_for(False, robust=True) == FROM_ZERO == spent(resolved(robust, False))
    )  # MMDiT: erasing needs it
    assert ROBUST.steps * ROBUST.batch_size > FROM_EDIT.steps * FROM_EDIT.batch_size
    given = resolved(TrainConfig(robust_rounds=4, steps=8, batch_size=1, pool=0), True)
    assert (given.steps, given.batch_size, given.pool) == (8, 1, 0)  # what the caller gives is kept


@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(0, 500),
    batch=st.integers(0, 64),
    pool=st.none() | st.integers(0, 4096),
    preserve=st.none() | st.floats(0, 1e3),
    closed=st.booleans(),
    rounds=st.sampled_from([0, 1, 4]),
)
def test_given_fields_are_kept_and_only_the_left_ones_filled(steps, batch, pool, preserve, closed, rounds):
    config = TrainConfig(
        steps=steps,
        batch_size=batch,
        pool=pool,
        preserve_weight=preserve,
        lr=1e-2,
        seed=3,
        robust_rounds=rounds,
    )
    out = resolved(config, closed)
    default = budget_for(closed, robust=rounds > 0)
    assert out.steps == (steps or default.steps) and out.batch_size == (batch or default.batch_size)
    assert out.pool == (default.pool if pool is None else pool)  # pool 0 (no pool) is a choice, kept
    # None: the budget's weight from zero; from the edit, still None (per category, as before)
    assert out.preserve_weight == (default.preserve_weight if preserve is None else preserve)
    assert (out.lr, out.seed, out.rank) == (config.lr, config.seed, config.rank)
    assert resolved(out, closed) == out  # resolving twice changes nothing


def test_negative_budgets_are_refused():
    for field in ("steps", "batch_size", "pool"):
        with pytest.raises(FmnPatchError, match=f"{field}=-1"):
            TrainConfig(**{field: -1})


def test_a_default_unet_patch_is_the_old_default_patch(pipeline_dirs):
    """The UNet (closed-form start) trains with the budget it always had: the same tensors as 15 x 4, pool 32."""
    folder = str(pipeline_dirs["sd1"])
    auto = train_patch(load_base(folder), ["circle"], TrainConfig(**UNET), progress=False)
    given_ = TrainConfig(**UNET, steps=15, batch_size=4, pool=32)
    old = train_patch(load_base(folder), ["circle"], given_, progress=False)
    assert auto.tensor_hash() == old.tensor_hash()
    assert (
        auto.info.config["steps"] == 15
        and auto.info.config["batch_size"] == 4
        and auto.info.config["pool"] == 32
    )


def test_an_mmdit_trains_from_zero_with_the_zero_budget_and_records_it(mmdit_dirs):
    base = load_base(str(mmdit_dirs["sd3"]))
    with pytest.warns(UserWarning, match="too few from zero"):  # 2 steps given: fewer than the budget's
        patch = train_patch(base, ["Elon Musk"], TrainConfig(**CHEAP, steps=2), progress=False)
    config, extra = patch.info.config, patch.info.extra
    assert extra["start"] == "zero" and config["steps"] == 2  # given: kept
    assert config["batch_size"] == FROM_ZERO.batch_size and config["pool"] == FROM_ZERO.pool
    assert config["preserve_weight"] == FROM_ZERO.preserve_weight
    assert extra["cost"]["samples"]["pool"] == min(FROM_ZERO.pool, 2 * FROM_ZERO.batch_size)


@pytest.mark.parametrize("option", ["--steps", "--batch-size"])
def test_the_cli_refuses_zero_rather_than_reading_it_as_the_default(capsys, tmp_path, option):
    """TrainConfig reads 0 as "the start's budget"; a user who types 0 gets one line and exit 2, not 15 x 4."""
    from test_cli import run

    out = tmp_path / "p.safetensors"
    code, _, err = run(capsys, "train", "circle", option, "0", "-o", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "from 1 to" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_inner_attack_of_no_steps_is_refused_before_training():
    """Concept Inversion of 0 steps cannot run: refused when the config is made, not after the first round."""
    with pytest.raises(FmnPatchError, match="robust_attack_steps=0 must be a whole number from 1"):
        TrainConfig(robust_rounds=2, robust_attack_steps=0)


def test_an_explicit_zero_neighbour_weight_stays_zero():
    """0 means the neighbours go unweighted in the preservation term; only None is left to the start's budget."""
    assert spent(resolved(TrainConfig(neighbour_weight=0.0), True)).neighbour_weight == 0.0
    assert spent(resolved(TrainConfig(), True)).neighbour_weight == FROM_EDIT.neighbour_weight == 10.0
    assert spent(resolved(TrainConfig(), False)).neighbour_weight == 1.0
