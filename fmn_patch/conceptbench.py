"""ConceptBench: concept lists with categories, aliases and prompt templates, loaded from JSON data files.

A bench file holds `concepts` (name, category, aliases), `templates` per category (with a `{name}` slot and
optionally attribute slots such as `{colour}`), and `attributes` (values for those slots). The prompts of a
concept are its category's templates expanded over every combination of the attribute values they use.
"""

from __future__ import annotations

import itertools
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast, get_args

Category = Literal["object", "style", "identity", "nsfw"]
CATEGORIES: tuple[Category, ...] = get_args(Category)
BENCH_DIR = Path(__file__).resolve().parent / "data" / "conceptbench"


@dataclass(frozen=True)
class Concept:
    """A concept to remember or forget; `aliases` are other names for it."""

    name: str
    category: Category
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"concept {self.name!r}: category {self.category!r} is not one of {CATEGORIES}")


@dataclass(frozen=True)
class Bench:
    """A concept list with prompt templates per category and attribute values for the templates' slots."""

    name: str
    concepts: tuple[Concept, ...]
    templates: dict[str, tuple[str, ...]]
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        for c in self.concepts:
            if c.category not in self.templates:
                raise ValueError(
                    f"bench {self.name!r}: no templates for category {c.category!r} (concept {c.name!r}); "
                    f"add a 'templates.{c.category}' list"
                )
        for category, templates in self.templates.items():
            for t in templates:
                slots = {f for _, f, _, _ in string.Formatter().parse(t) if f}
                unknown = slots - {"name"} - set(self.attributes)
                if "name" not in slots or unknown:
                    raise ValueError(
                        f"bench {self.name!r}: template {t!r} ({category}) needs a {{name}} slot and only slots "
                        f"from attributes {sorted(self.attributes)}; unknown: {sorted(unknown)}"
                    )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def concept(self, name: str) -> Concept:
        """The concept called `name` (or having `name` as an alias)."""
        for c in self.concepts:
            if name == c.name or name in c.aliases:
                return c
        raise KeyError(
            f"bench {self.name!r} has no concept {name!r}; known concepts: {', '.join(self.names)}"
        )

    def of_category(self, category: str) -> list[Concept]:
        return [c for c in self.concepts if c.category == category]

    def prompts(self, concept: Concept, name: str | None = None) -> list[str]:
        """The concept's prompts, calling it `name` (default: its own name; pass an alias for alias prompts)."""
        out: list[str] = []
        for template in self.templates[concept.category]:
            slots = [f for _, f, _, _ in string.Formatter().parse(template) if f and f != "name"]
            keys = list(dict.fromkeys(slots))
            for values in itertools.product(*(self.attributes[k] for k in keys)):
                out.append(template.format(name=name or concept.name, **dict(zip(keys, values, strict=True))))
        return out


def bench_from_dict(data: dict) -> Bench:
    try:
        concepts = tuple(
            Concept(c["name"], cast(Category, c["category"]), tuple(c.get("aliases", ())))
            for c in data["concepts"]
        )
        return Bench(
            name=data["name"],
            concepts=concepts,
            templates={k: tuple(v) for k, v in data["templates"].items()},
            attributes={k: tuple(v) for k, v in data.get("attributes", {}).items()},
            description=data.get("description", ""),
        )
    except KeyError as e:
        raise ValueError(f"bench file lacks the field {e}; see fmn_patch/data/conceptbench/toy.json") from e


def bench_path(name_or_path: str | Path) -> Path:
    """`toy` and `real` name the shipped benches; anything else is a path to a JSON file."""
    shipped = BENCH_DIR / f"{name_or_path}.json"
    if isinstance(name_or_path, str) and "/" not in name_or_path and shipped.exists():
        return shipped
    path = Path(name_or_path)
    if not path.exists():
        names = sorted(p.stem for p in BENCH_DIR.glob("*.json"))
        raise FileNotFoundError(
            f"no bench {str(name_or_path)!r}: use one of {names} or a path to a JSON file"
        )
    return path


def load_bench(name_or_path: str | Path = "toy") -> Bench:
    """Load a ConceptBench: `"toy"`, `"real"` or a path to a bench JSON file."""
    return bench_from_dict(json.loads(bench_path(name_or_path).read_text(encoding="utf-8")))
