"""Command-line options of the toy trainers, read from their dataclass configs (one option per field), and the
progress lines they print."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def log(msg: str) -> None:
    """A progress line, on stderr, at once."""
    print(msg, file=sys.stderr, flush=True)


def parse_config(cls: type[T], argv: list[str] | None, prog: str, description: str) -> T:
    """`cls` built from `--field-name VALUE` options; a bool field is a flag; a bad value (the config's own
    ValueError included) exits 2 with argparse's one-line message."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    defaults: Any = cls()
    for f in fields(defaults):
        default = getattr(defaults, f.name)
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=f"(default {default})")
            continue
        kind = Path if isinstance(default, Path) or f.name == "state" else type(default)
        parser.add_argument(flag, type=kind, default=default, help=f"(default {default})")
    args = parser.parse_args(argv)
    try:
        return cls(**vars(args))
    except ValueError as e:
        parser.error(str(e))
