"""Torch threads per job: one for a toy-sized model, the caller's count otherwise, FMNPATCH_THREADS over both."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fmn_patch
from fmn_patch.errors import FmnPatchError
from fmn_patch.families.threads import ENV, SMALL, job_threads, sized_threads, threads_for


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_toy_sized_job_runs_on_one_thread_and_gives_the_callers_count_back(sd1, two_threads, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    seen = []

    @sized_threads
    def job(base, label):
        seen.append((torch.get_num_threads(), type(base).__name__, label))
        return label

    assert job(sd1, label="x") == "x"
    assert seen == [(1, "Base", "x")]  # the job gets the loaded base, whatever it was given
    assert torch.get_num_threads() == 2


def test_the_callers_count_comes_back_after_an_error(sd1, two_threads, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)

    @sized_threads
    def job(base):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job(sd1)
    assert torch.get_num_threads() == 2


def test_large_models_keep_the_callers_count_and_the_variable_overrides_both(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert job_threads(SMALL - 1) == 1 and job_threads(SMALL) is None and job_threads(860_000_000) is None
    monkeypatch.setenv(ENV, "2")
    assert job_threads(1_000) == 2 and job_threads(860_000_000) == 2
    with threads_for(torch.nn.Linear(4, 4)) as n:
        assert n == torch.get_num_threads() == 2


def _a_count(value: str) -> bool:
    stripped = value.strip()
    return stripped.isascii() and stripped.isdigit() and int(stripped) >= 1


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=8).filter(lambda v: "\x00" not in v and not _a_count(v)))
@example(value="0\x1f")  # whitespace that str.strip removes and int() does not
@example(value="\u0663")  # an Arabic-Indic three: a digit, not an ASCII one
def test_a_bad_thread_count_is_refused_naming_it(value):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV, value)
        with pytest.raises(
            FmnPatchError, match=f"{ENV}=.* is not a thread count; give a whole number of 1 or"
        ):
            job_threads(10)


def test_a_count_with_spaces_around_it_is_read(monkeypatch):
    monkeypatch.setenv(ENV, " 3\n")
    assert job_threads(10) == 3


@pytest.mark.parametrize(
    "name",
    [
        "train_patch",
        "train_patch_with_inversion",
        "correct_patch",
        "edit_patch",
        "train_fmn_baseline",
        "evaluate_patches",
        "sample",
        "preview",
        "run_attacks",
    ],
)
def test_every_public_job_takes_its_threads_from_its_base(name):
    fn = getattr(fmn_patch, name)
    assert getattr(fn, "__wrapped__", None) is not None, f"{name} is not wrapped in sized_threads"


def test_scoring_a_model_on_a_bench_takes_its_threads_from_its_base():
    from fmn_patch.evaluation.mscore import evaluate

    assert getattr(evaluate, "__wrapped__", None) is not None  # benches call it directly, many times over
