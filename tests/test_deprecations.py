"""Names kept one release after they moved or stopped being used: each still resolves, to the same object as its
new home, with a DeprecationWarning naming where to go; a name that never existed is still an AttributeError."""

from __future__ import annotations

import importlib
import sys

import pytest

import fmn_patch


@pytest.mark.parametrize("module", ["fmn_patch", "fmn_patch.errors"])
def test_not_built_error_is_kept_one_release_with_a_warning(module):
    with pytest.warns(DeprecationWarning, match="NotBuiltError is deprecated"):
        error = importlib.import_module(module).NotBuiltError
    assert issubclass(error, fmn_patch.FmnPatchError)
    with pytest.raises(AttributeError, match="no attribute 'PlannedError'"):
        importlib.import_module(module).PlannedError  # noqa: B018


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("fmn_patch.families.tiny", "fmn_patch.testing.tiny", "build_sd"),
        ("fmn_patch.families.tiny_mmdit", "fmn_patch.testing.tiny_mmdit", "build_mmdit"),
    ],
)
def test_the_tiny_pipelines_moved_to_testing_with_an_alias(monkeypatch, old, new, name):
    monkeypatch.delitem(sys.modules, old, raising=False)  # the warning comes at the alias's first import
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        alias = importlib.import_module(old)
    assert getattr(alias, name) is getattr(importlib.import_module(new), name)
    assert set(alias.__all__) == set(importlib.import_module(new).__all__)
