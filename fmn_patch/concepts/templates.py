"""Prompt templates: the one check of their slots and the one expansion over attribute values.

A template is a ``str.format`` string with a ``{name}`` slot for the concept and, in a bench, slots named after the
bench's attributes (``{colour}``), expanded over every combination of their values.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Mapping, Sequence

from ..errors import BenchError


def slots(template: str) -> list[str]:
    """The slot names of a template, in order of first use; raises on a malformed one."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise BenchError(f"template {template!r} is malformed ({e}); write slots as {{name}}") from e
    return list(dict.fromkeys(fields))


def check_template(template: str, attributes: Sequence[str] = (), where: str = "") -> None:
    """A template needs a ``{name}`` slot and no slot but ``name`` and ``attributes``."""
    if not isinstance(template, str):
        raise BenchError(f"{where}template {template!r} is not text; write e.g. 'a photo of {{name}}'")
    found = slots(template)
    unknown = sorted(set(found) - {"name", *attributes})
    if "name" not in found or unknown or "" in found:
        allowed = f" and attribute slots {sorted(attributes)}" if attributes else ""
        raise BenchError(
            f"{where}template {template!r} needs one slot, {{name}}{allowed}; unknown slots: {unknown}; "
            "e.g. 'a photo of {name}'"
        )


def expand(template: str, attributes: Mapping[str, Sequence[str]]) -> list[str]:
    """The template with every combination of its attribute slots filled in and ``{name}`` left open."""
    keys = [k for k in slots(template) if k != "name"]
    return [
        template.format(name="{name}", **dict(zip(keys, values, strict=True)))
        for values in itertools.product(*(attributes[k] for k in keys))
    ]


def fill(template: str, name: str) -> str:
    """A template whose attribute slots are filled, with ``name`` in its ``{name}`` slot."""
    return template.replace("{name}", name)
