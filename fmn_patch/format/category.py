"""Concept categories: the one ``Category`` type, its shorthands and its normaliser.

A category is recorded with every concept a patch forgets, and decides a concept's prompt templates, default
anchor and loss weights. ``id`` and ``obj`` are accepted everywhere a category is typed.
"""

from __future__ import annotations

from typing import Final, Literal, cast, get_args

from ..errors import UnknownNameError

Category = Literal["identity", "object", "style", "nsfw", "other"]
CATEGORIES: Final[tuple[Category, ...]] = get_args(Category)
SHORTHANDS: Final[dict[str, Category]] = {"id": "identity", "obj": "object"}


def category_of(name: str) -> Category:
    """The category called ``name`` (or by a shorthand: ``id``, ``obj``); raises with the choices otherwise."""
    text = name.strip().lower() if isinstance(name, str) else name
    category = SHORTHANDS.get(text, text)
    if category not in CATEGORIES:
        raise UnknownNameError(
            f"unknown category {name!r}; use one of {', '.join(CATEGORIES)} (or the shorthands id, obj)"
        )
    return cast(Category, category)
