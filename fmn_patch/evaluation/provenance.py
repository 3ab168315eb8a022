"""Where and when a measurement ran: the block every results file and build record carries."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


def git_revision(folder: Path | None = None) -> str:
    """Short commit of the checkout holding ``folder`` (default: this package), "+dirty" when it has changes;
    "unknown" outside a git checkout."""
    here = folder or Path(__file__).parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=here)
    except OSError:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") or "unknown"


def provenance(command: Sequence[str] | None = None) -> dict[str, Any]:
    """Command (default: this process's argv), UTC date, machine, torch version and threads, git revision."""
    return {
        "command": " ".join([Path(sys.executable).name, *(sys.argv if command is None else command)]),
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "git_revision": git_revision(),
    }
