"""ConceptBench: concepts with categories and aliases, prompt templates, default anchors and the judge that scores
them, loaded from JSON data files found through a registry of bench names.

A bench file holds ``concepts`` (name, category, aliases), ``templates`` per category (with a ``{name}`` slot and
optionally attribute slots such as ``{colour}``), ``attributes`` (values for those slots), ``anchors`` (the neutral
words a category's concepts are redirected to when no anchor is given), ``judge`` (the registered judge that
scores its images), and what the attacks use: ``paraphrases`` (templates per category in word orders the
``templates`` never use) and ``inversion_template`` (the prompt Concept Inversion learns its token in). The
prompts of a concept are its category's templates expanded over every combination of the attribute values they
use. ``real`` ships here; worlds register theirs (``toy``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BenchError, UnknownNameError
from ..format.category import Category, category_of
from .templates import check_template, expand, fill

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "conceptbench"
_BENCHES: dict[str, Path] = {"real": DATA_DIR / "real.json"}


@dataclass(frozen=True)
class Concept:
    """A concept to remember or forget: the words the model knows it by, its category, other names for it and,
    optionally, its own anchor and prompt templates (each with one ``{name}`` slot; empty: the bench's)."""

    name: str
    category: Category
    aliases: tuple[str, ...] = ()
    anchor: str | None = (
        None  # what it is redirected to when forgotten; None: the bench's anchor of its category
    )
    templates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise BenchError(
                f"a concept name must be non-empty text, got {self.name!r}; give the words the model knows it "
                "by, e.g. 'Elon Musk'"
            )
        object.__setattr__(self, "category", category_of(self.category))
        object.__setattr__(self, "aliases", tuple(a for a in dict.fromkeys(self.aliases) if a != self.name))
        object.__setattr__(self, "templates", tuple(self.templates))
        for t in self.templates:
            check_template(t, where=f"concept {self.name!r}: ")

    @property
    def names(self) -> tuple[str, ...]:
        """The name, then the aliases."""
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class Bench:
    """A concept list with prompt templates per category, attribute values for the templates' slots, the default
    anchor of each category and the judge that scores it."""

    name: str
    concepts: tuple[Concept, ...]
    templates: dict[str, tuple[str, ...]]
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    anchors: dict[str, str] = field(default_factory=dict)
    judge: str = "clip"
    description: str = ""
    paraphrases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    inversion_template: str = "a photo of {}"

    def __post_init__(self) -> None:
        for c in self.concepts:
            if not c.templates and c.category not in self.templates:
                raise BenchError(
                    f"bench {self.name!r}: no templates for category {c.category!r} (concept {c.name!r}); "
                    f"add a 'templates.{c.category}' list"
                )
        for kind, table in (("", self.templates), ("paraphrase ", self.paraphrases)):
            for category, templates in table.items():
                for t in templates:
                    check_template(
                        t, list(self.attributes), where=f"bench {self.name!r} ({kind}{category}): "
                    )
        if self.inversion_template.count("{}") != 1:
            raise BenchError(
                f"bench {self.name!r}: inversion_template {self.inversion_template!r} needs one '{{}}', "
                "e.g. 'a photo of {}'"
            )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def find(self, name: str) -> Concept | None:
        """The concept called ``name`` (or having ``name`` as an alias), or None."""
        return next((c for c in self.concepts if name in c.names), None)

    def concept(self, name: str) -> Concept:
        """The concept called ``name`` (or having ``name`` as an alias); raises with the known names."""
        found = self.find(name)
        if found is None:
            raise UnknownNameError(
                f"concept {name!r} is not in ConceptBench {self.name!r}; choose one of {', '.join(self.names)} "
                "or give a bench that lists it with --bench"
            )
        return found

    def of_category(self, category: str) -> list[Concept]:
        return [c for c in self.concepts if c.category == category]

    def anchor(self, category: str) -> str:
        """The neutral word a concept of ``category`` is redirected to by default ("" when the bench names none)."""
        return self.anchors.get(category, "")

    def templates_for(self, concept: Concept) -> list[str]:
        """The concept's templates with attribute slots filled in and ``{name}`` open: its own, else its
        category's in this bench."""
        if concept.templates:
            return list(concept.templates)
        if concept.category not in self.templates:
            raise BenchError(
                f"bench {self.name!r} has no prompt templates for category {concept.category!r}; use one of "
                f"{', '.join(sorted(self.templates))}, or give the concept its own templates"
            )
        return [t for template in self.templates[concept.category] for t in expand(template, self.attributes)]

    def prompts(self, concept: Concept, name: str | None = None) -> list[str]:
        """The concept's prompts, calling it ``name`` (default: its own name; pass an alias for alias prompts)."""
        return [fill(t, name or concept.name) for t in self.templates_for(concept)]

    def paraphrase_prompts(self, concept: Concept) -> list[str]:
        """The concept's name and aliases in the bench's paraphrase templates of its category."""
        if concept.category not in self.paraphrases:
            raise BenchError(
                f"bench {self.name!r} has no paraphrase templates for category {concept.category!r}; add a "
                f"'paraphrases.{concept.category}' list to it"
            )
        ready = [
            t for template in self.paraphrases[concept.category] for t in expand(template, self.attributes)
        ]
        return [fill(t, name) for name in concept.names for t in ready]


def bench_from_dict(data: Mapping[str, Any], source: str = "bench") -> Bench:
    try:
        concepts = tuple(
            Concept(c["name"], c["category"], tuple(c.get("aliases", ()))) for c in data["concepts"]
        )
        return Bench(
            name=data["name"],
            concepts=concepts,
            templates={k: tuple(v) for k, v in data["templates"].items()},
            attributes={k: tuple(v) for k, v in data.get("attributes", {}).items()},
            anchors=dict(data.get("anchors", {})),
            judge=str(data.get("judge", "clip")),
            description=data.get("description", ""),
            paraphrases={k: tuple(v) for k, v in data.get("paraphrases", {}).items()},
            inversion_template=str(data.get("inversion_template", "a photo of {}")),
        )
    except KeyError as e:
        raise BenchError(f"{source} lacks the field {e}; see {DATA_DIR / 'real.json'}") from e
    except (TypeError, AttributeError) as e:
        raise BenchError(f"{source} has a field of the wrong type ({e}); see {DATA_DIR / 'real.json'}") from e


def register_bench(name: str, path: Path) -> None:
    """Make ``load_bench(name)`` read ``path`` (worlds register their benches at import)."""
    _BENCHES[name] = path


def bench_names() -> list[str]:
    return sorted(_BENCHES)


def bench_path(name_or_path: str | Path) -> Path:
    """A registered bench name (``real``, ``toy``) or a path to a JSON file."""
    if isinstance(name_or_path, str) and name_or_path in _BENCHES:
        return _BENCHES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise UnknownNameError(
            f"no bench {str(name_or_path)!r}: use one of {bench_names()} or a path to a JSON file"
        )
    return path


def load_bench(name_or_path: str | Path) -> Bench:
    """Load a ConceptBench: a registered name (``real``, ``toy``) or a path to a bench JSON file."""
    path = bench_path(name_or_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"bench file {str(path)!r} is not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise BenchError(f"bench file {str(path)!r} is not a JSON object; see {DATA_DIR / 'real.json'}")
    return bench_from_dict(data, f"bench file {str(path)!r}")
