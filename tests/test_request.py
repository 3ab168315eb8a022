"""What the CLI and the page both take from the library: the base (option, FMNPATCH_BASE, the toy world), the early
refusals, presets, the file name, and one ``forget`` call on the toy model."""

from __future__ import annotations

import pytest

from fmn_patch import (
    BASE_ENV,
    ForgetRequest,
    Patch,
    configured_base,
    forget,
    outlook,
    patch_filename,
    refuse_local,
)
from fmn_patch.errors import FmnPatchError
from fmn_patch.values import MAX_STEPS


def test_the_base_comes_from_the_option_then_the_environment_then_the_world(monkeypatch):
    monkeypatch.delenv(BASE_ENV, raising=False)
    assert configured_base(None, ["circle"]) == "toy"
    assert configured_base("./sd15", ["circle"]) == "./sd15"
    monkeypatch.setenv(BASE_ENV, "acme/sd15")
    assert configured_base(None, ["Elon Musk"]) == "acme/sd15"


def test_a_hosted_page_takes_names_and_hub_ids_only(tmp_path):
    refuse_local("toy")
    refuse_local("acme/sd15")
    for local in (str(tmp_path), "./sd15", "/etc", "~/models", "a/b/c", "..\\x"):
        with pytest.raises(FmnPatchError, match="does not read local folders"):
            refuse_local(local)
    with pytest.raises(FmnPatchError, match="does not read local folders"):
        ForgetRequest(("circle",), base=str(tmp_path), local_paths=False).base_ref()
    with pytest.raises(FmnPatchError, match="not one of the shipped"):
        ForgetRequest(preset=str(tmp_path / "p.json"), local_paths=False).chosen_preset()


def test_a_family_refuses_what_it_does_not_serve_before_loading():
    sd3 = outlook("toy-sd3")
    assert sd3.family == "sd3" and sd3.methods == ("train",)
    assert "--robust is not offered for sd3" in sd3.refusals["robust"]
    with pytest.raises(FmnPatchError, match="--robust is not offered"):
        ForgetRequest(("circle",), base="toy-sd3", method="robust").base_ref()
    assert outlook("toy").methods == ("edit", "train", "robust")


def test_file_names_are_safe_whatever_the_concept():
    assert patch_filename(["circle"]) == "forget-circle.safetensors"
    assert patch_filename(["circle=disc", "bob"]) == "forget-circle-and-1-more.safetensors"
    assert patch_filename(["\x1b[31m../../etc/passwd"]) == "forget-31m-etc-passwd.safetensors"
    assert patch_filename(["日本"]) == "forget-concept.safetensors"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"concepts": ("circle",), "steps": MAX_STEPS + 1}, "steps"),
        ({"concepts": ("circle",), "steps": 0}, "steps"),
        ({"concepts": ("circle",), "rank": -1}, "rank"),
        ({"concepts": ("  ",)}, "no concept given"),
        ({"concepts": ()}, "no concept given"),
        ({"concepts": ("circle",), "method": "erase"}, "method 'erase'"),
        ({"preset": "nsfw", "category": "style"}, "category does not combine"),
    ],
)
def test_bad_requests_are_refused_in_one_line(kwargs, message):
    with pytest.raises(FmnPatchError, match=message) as e:
        ForgetRequest(**kwargs)
    assert "\n" not in str(e.value)


def test_forget_edits_a_toy_concept_in_one_call(tmp_path):
    request = ForgetRequest(("circle",), method="edit", rank=2)
    patch = forget(request)
    path = patch.save(tmp_path / request.filename())
    assert path.name == "forget-circle.safetensors"
    assert Patch.load(path).concept_names == ["circle"] and patch.rank == 2
