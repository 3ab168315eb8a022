"""Registries of model families and of named bases (embedded worlds such as the toy model).

A family module ends with ``register_family(TheFamily)``; an embedded world registers a ``NamedBase`` that says
where its pipeline lies, how to recognise a loaded pipeline as one of its models from the pipeline's contents, and
which bench and ModelSpec architecture it implies. Nothing else compares base names to strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UnknownNameError

if TYPE_CHECKING:
    from .family import Family

_FAMILIES: list[type[Family]] = []
_NAMED: dict[str, NamedBase] = {}


@dataclass(frozen=True)
class NamedBase:
    """A base known by name, and the world its models belong to."""

    name: str  # what users type: ``toy``
    locate: Callable[[], Path]  # the diffusers folder of the named base
    recognise: Callable[[Any], bool]  # is a loaded pipeline a model of this world (read from its contents)?
    bench: str  # the ConceptBench its models are measured on by default
    architecture: str | None = None  # ModelSpec architecture id recorded in patches (None: the family's)


def register_family(family: type[Family]) -> type[Family]:
    """Make ``load_base`` and ``as_base`` consider ``family``; the latest registration is asked first."""
    if family in _FAMILIES:
        _FAMILIES.remove(family)
    _FAMILIES.insert(0, family)
    return family


def unregister_family(family: type[Family]) -> None:
    if family in _FAMILIES:
        _FAMILIES.remove(family)


def families() -> list[type[Family]]:
    return list(_FAMILIES)


def family_of(pipe: Any) -> type[Family]:
    """The family that claims a loaded pipeline."""
    for family in _FAMILIES:
        if family.claims(pipe):
            return family
    known = ", ".join(f.name for f in _FAMILIES)
    raise UnknownNameError(
        f"no model family serves {type(pipe).__name__}; fmn-patch serves the families {known} "
        "(SD 1.x, 2.x, SDXL pipelines)"
    )


def family_named_in_index(model_index: dict[str, Any]) -> type[Family] | None:
    """The family whose denoiser a ``model_index.json`` names, where it can tell before loading (None: it cannot)."""
    return next((f for f in _FAMILIES if f.named_in_index(model_index)), None)


def family_for_index(model_index: dict[str, Any]) -> type[Family] | None:
    """The family that loads a folder itself, from its ``model_index.json`` (None: diffusers loads it)."""
    return next((f for f in _FAMILIES if f.claims_index(model_index)), None)


def family_for_architecture(architecture: str) -> type[Family]:
    """The family whose patches carry this ModelSpec architecture id."""
    for family in _FAMILIES:
        if family.identity_role.serves_architecture(architecture):
            return family
    raise UnknownNameError(
        f"no model family knows the architecture {architecture!r}; known families: "
        f"{', '.join(f.name for f in _FAMILIES)}"
    )


def register_base(named: NamedBase) -> NamedBase:
    _NAMED[named.name] = named
    return named


def named_base(name: str) -> NamedBase | None:
    return _NAMED.get(name)


def named_bases() -> list[NamedBase]:
    return list(_NAMED.values())


def world_of(pipe: Any) -> NamedBase | None:
    """The named world a loaded pipeline belongs to, recognised by its contents (never by its name)."""
    return next((n for n in _NAMED.values() if n.recognise(pipe)), None)
