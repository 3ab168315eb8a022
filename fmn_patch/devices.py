"""Devices: which torch devices this machine and this torch build can run the models on, and the check of a
requested one, made before anything loads (``--device cuda`` on a CPU-only build is the most common mistake)."""

from __future__ import annotations

from typing import Final

import torch

from .errors import FmnPatchError
from .text import printable

#: Device types that hold real weights and run the pipelines; others torch parses (``meta``, ``xla``, ``ipu``)
#: are refused: ``meta`` has no data, and the rest need a backend this package does not drive.
RUNS_ON: Final = ("cpu", "cuda", "mps", "xpu")


def available() -> list[str]:
    """The devices a ``--device`` may name here: ``cpu``, and each accelerator this torch build sees."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += ["xpu", *(f"xpu:{i}" for i in range(xpu.device_count()))]
    return found


def check_device(device: str, what: str = "--device") -> str:
    """``device`` if this machine can run the models on it; else a one-line ``FmnPatchError`` naming the devices
    it has."""
    have = available()
    shown = printable(device, 60)
    options = f"use one of {', '.join(have)}"
    build = f"torch {torch.__version__}" + ("" if torch.cuda.is_available() else ", without CUDA")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise FmnPatchError(f"{what} {shown!r} is not a torch device; {options}") from None
    if parsed.type not in RUNS_ON:
        raise FmnPatchError(
            f"{what} {shown!r}: the models do not run on {parsed.type!r} devices here; {options}"
        )
    if parsed.type == "cpu":
        return device
    if str(parsed) not in have and parsed.type not in have:
        raise FmnPatchError(f"{what} {shown!r} is not available on this machine ({build}); {options}")
    if parsed.index is not None and str(parsed) not in have:
        raise FmnPatchError(f"{what} {shown!r}: this machine has no such {parsed.type} device; {options}")
    return device
