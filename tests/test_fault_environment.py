"""Faults outside the input files (issue 29), in what surrounds a command: a device this machine lacks, a
launcher's variables without the launcher, a reference cache entry that does not verify, and very long values.
As in test_fault_outputs: exit 2, one error line, no traceback, nothing written (the shared helpers: faults).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import safetensors.torch
import torch
from faults import _quiet_phases, inputs, refused, run  # noqa: F401  (the fixtures)

from fmn_patch import processes
from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import load_base

# ----------------------------------------------------------------------------------------------- devices
BAD_DEVICES = ["cuda", "cuda:0", "garbage", "", "cuda:-1", "mps", "xla", "meta", "CPU", " cpu", "x" * 10_000]
DEVICE_COMMANDS = [
    ["edit", "circle"],
    ["edit", "circle", "bob", "--each"],
    ["train", "circle"],
    ["apply", "toy", "{circle}"],
    ["eval", "toy"],
    ["correct", "circle", "--attribute", "colour"],
    ["attack", "toy", "--concept", "circle"],
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", BAD_DEVICES, ids=lambda d: repr(d[:12]))
@pytest.mark.parametrize("argv", DEVICE_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_a_device_this_machine_lacks_is_one_line_before_anything_loads(
    capsys, tmp_path, monkeypatch, inputs, device, argv
):
    monkeypatch.chdir(tmp_path)
    loaded = []
    monkeypatch.setattr("fmn_patch.families.base.family_for_index", lambda *a: loaded.append(a))
    code, _, err = run(capsys, *[a.format(circle=inputs["circle"]) for a in argv], "--device", device)
    line = refused(code, err)
    assert "--device" in line and "use one of cpu" in line and len(line) < 400, line
    assert loaded == [] and list(tmp_path.iterdir()) == []


def test_the_library_checks_the_device_too():
    with pytest.raises(FmnPatchError, match=r"device 'meta'.*use one of cpu"):
        load_base("toy", device="meta")


# ---------------------------------------------------------------------------------------- launcher variables
STRAY = [
    {"WORLD_SIZE": "2"},
    {"RANK": "1"},
    {"LOCAL_RANK": "0"},
    {"WORLD_SIZE": "2", "RANK": "0"},
    {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},  # no rendezvous address
    {"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
    {"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
    {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "http"},
    {"WORLD_SIZE": "-2", "RANK": "0"},
    {"OMPI_COMM_WORLD_SIZE": "2"},
    {"PMI_SIZE": "2", "PMI_RANK": "7"},
]
LAUNCHED = [  # what torchrun and mpirun set: accepted (the group is joined later, by accelerate)
    {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
    {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
    {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "RANK": "1"},
    {},
]
ALL_VARIABLES = {name for env in STRAY + LAUNCHED for name in env}


@pytest.fixture
def clean_env(monkeypatch):
    for name in ALL_VARIABLES | {"LOCAL_WORLD_SIZE", "PMI_RANK", "MV2_COMM_WORLD_SIZE"}:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(processes, "_CURRENT", [])


@pytest.mark.parametrize("env", STRAY, ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items()))
def test_a_launchers_variables_without_the_launcher_are_one_line(capsys, monkeypatch, clean_env, inputs, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "inspect", str(inputs["circle"]))
    line = refused(code, err)
    assert "no launcher started this process" in line and "accelerate launch" in line and out == ""
    assert line.startswith("fmnpatch: error: "), "no '(process N)' for a process no launcher started"


@pytest.mark.parametrize("env", LAUNCHED, ids=lambda e: "-".join(e) or "none")
def test_a_launchers_whole_set_is_accepted(clean_env, env):
    processes.check_launcher_environment(env)


# ----------------------------------------------------------------------------------------- the reference cache
@pytest.fixture(scope="module")
def toy():
    return load_base("toy")


DAMAGE: dict[str, Callable[[torch.Tensor], dict[str, torch.Tensor] | bytes]] = {
    "shape": lambda t: {"latents": torch.zeros(t.shape[0], t.shape[1], 8, 8)},
    "count": lambda t: {"latents": t[:0]},
    "channels": lambda t: {"latents": torch.zeros(t.shape[0], 3, *t.shape[2:])},
    "flat": lambda t: {"latents": t.flatten()},
    "int": lambda t: {"latents": t.to(torch.int32)},
    "nan": lambda t: {"latents": t.clone().fill_(math.nan)},
    "inf": lambda t: {"latents": t.clone().fill_(math.inf)},
    "extra": lambda t: {"latents": t, "other": t.clone()},
    "renamed": lambda t: {"images": t},
    "garbage": lambda t: b"\x00" * 64,
    "empty": lambda t: b"",
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_reference_cache_entry_that_does_not_verify_is_drawn_again(
    capsys, tmp_path, monkeypatch, toy, damage
):
    from fmn_patch.families import references

    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path))
    args = (toy, ["a circle"], [0, 1])
    fresh = references.generated_latents(*args, steps=1, guidance=2.0)
    [entry] = list((tmp_path / "fmn-patch" / "references").glob("*.safetensors"))
    bad = DAMAGE[damage](fresh)
    if isinstance(bad, bytes):
        entry.write_bytes(bad)
    else:
        safetensors.torch.save_file(bad, str(entry))
    again = references.generated_latents(*args, steps=1, guidance=2.0)
    assert torch.equal(again, fresh)
    assert torch.equal(safetensors.torch.load_file(str(entry))["latents"], fresh), "the entry is replaced"
    assert "does not verify" in capsys.readouterr().err or damage in ("garbage", "empty")


# ------------------------------------------------------------------------------------------ very long values
LONG = "q" * 10_000


@pytest.mark.parametrize(
    "argv",
    [
        ["edit", "{v}"],
        ["edit", "circle", "--base", "{v}"],
        ["apply", "{v}", "{circle}"],
        ["eval", "toy", "--concept", "{v}"],
        ["edit", "circle", "--device", "{v}"],
        ["merge", "{circle}", "{bob}", "-o", "{v}"],
        ["inspect", "{v}.safetensors"],
    ],
    ids=lambda a: "-".join(x for x in a[:3] if "{" not in x),
)
def test_a_very_long_value_is_shortened_not_the_sentence(capsys, tmp_path, monkeypatch, inputs, argv):
    """The line with a 10,000-character value says all the line with a one-character value says, but the value."""
    monkeypatch.chdir(tmp_path)
    lines = {}
    for value in ("q", LONG):
        code, _, err = run(
            capsys, *[a.format(v=value, circle=inputs["circle"], bob=inputs["bob"]) for a in argv]
        )
        lines[value] = refused(code, err)
    short, long_ = lines["q"], lines[LONG]
    assert len(long_) < 1200, len(long_)
    words = [w for w in short.replace("'q'", " ").split() if "q" not in w]
    missing = [w for w in words if w not in long_]
    # a path the file system cannot even look up says so, its fix first: "too long ...; choose a shorter name"
    assert not missing or "choose a shorter name" in long_, (short, long_[:600])
    assert re.search(r"\d,\d{3} (more )?characters", long_), "the value is shown shortened, with its length"
    assert list(tmp_path.iterdir()) == []
