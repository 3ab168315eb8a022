"""requirements.lock read as data: the locked set, the installed set, and how they differ.

The conformance tests compare pyproject.toml's ranges and the environment with the lock; ``make test-latest`` runs
this file to print which releases it tries beyond the lock. Standard library only, so it runs in any environment.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import distributions
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
PROJECT = "fmn-patch"
# venv puts pip in before the lock is read; it installs, it is not installed for the package.
BOOTSTRAP = {"pip"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def canonical(name: str) -> str:
    """PEP 503's normal form, in which the lock, pip freeze and pyproject.toml spell the same package alike."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path = LOCK) -> dict[str, str]:
    """Package -> exact version, for every ``name==version`` line of the lock (comments and ``via`` notes aside)."""
    pins = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if match is None:
            raise ValueError(
                f"{path}:{number}: {line!r} is not an exact name==version pin; regenerate with make lock"
            )
        pins[canonical(match[1])] = match[2]
    return pins


def installed() -> dict[str, str]:
    """Package -> version of everything in this interpreter's environment but the project and pip itself."""
    found = {canonical(d.metadata["Name"]): d.version for d in distributions()}
    return {name: v for name, v in found.items() if name != PROJECT and name not in BOOTSTRAP}


def differences(lock: dict[str, str], env: dict[str, str]) -> list[str]:
    """One line per package whose installed version is not the locked one, or that only one side has."""
    lines = []
    for name in sorted(lock.keys() | env.keys()):
        want, have = lock.get(name), env.get(name)
        if want != have:
            lines.append(f"{name}: locked {want or '-'}, installed {have or '-'}")
    return lines


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else LOCK
    changed = differences(locked(path), installed())
    print(f"{len(changed)} packages differ from {path.name}" + (":" if changed else ""))
    for line in changed:
        print("  " + line)
