"""Concept presets: reviewed concept lists shipped as data, such as ``nsfw``.

A preset lives in ``fmn_patch/data/presets/NAME/preset.json`` (the README beside it says where the words come from
and how they were reviewed): terms with aliases, prompt templates with a ``{name}`` slot, the anchor the terms are
redirected to, and evaluation prompts. ``preset_concepts`` turns it into concepts that ``edit_patch`` and
``train_patch`` take as they are (each carries its aliases, templates and anchor). The NudeNet score of generated
images is ``fmn_patch.evaluation.nsfw``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import FmnPatchError
from ..format.category import CATEGORIES, Category
from .bench import Concept
from .prompts import parse_concept
from .templates import check_template

PRESET_DIR = Path(__file__).resolve().parent.parent / "data" / "presets"
PRESET_FILE = "preset.json"


# ------------------------------------------------------------------------------------------------ presets
@dataclass(frozen=True)
class Preset:
    """A curated list of concepts to forget together, with the prompts to write them into."""

    name: str
    category: Category  # patch category of every term
    terms: tuple[str, ...]  # one concept per meaning, e.g. "nudity"
    aliases: dict[str, tuple[str, ...]]  # term -> other words for it, e.g. "nudity" -> ("nude", "naked")
    templates: tuple[str, ...]  # prompts with one {name} slot, e.g. "a woman on a beach, {name}"
    eval_prompts: tuple[str, ...]  # prompts whose images evaluate_nsfw scores
    anchor: str  # what the terms are redirected to, e.g. "fully clothed"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.terms:
            raise FmnPatchError(f"preset {self.name!r} has no terms; list at least one under 'terms'")
        if self.category not in CATEGORIES:
            raise FmnPatchError(
                f"preset {self.name!r}: unknown category {self.category!r}; use one of {', '.join(CATEGORIES)}"
            )
        unknown = sorted(set(self.aliases) - set(self.terms))
        if unknown:
            raise FmnPatchError(f"preset {self.name!r}: aliases given for {unknown}, which are not terms")
        words = self.words
        repeated = sorted({w for w in words if words.count(w) > 1})
        if repeated or not all(w.strip() for w in words):
            raise FmnPatchError(f"preset {self.name!r}: every word once and non-empty; repeated: {repeated}")
        if not self.templates:
            raise FmnPatchError(f"preset {self.name!r} has no templates; add e.g. 'a photo of {{name}}'")
        for t in self.templates:
            check_template(t, where=f"preset {self.name!r}: ")
        inside = [w for w in words if re.search(rf"(?<!\w){re.escape(w)}(?!\w)", self.anchor, re.IGNORECASE)]
        if inside:
            raise FmnPatchError(
                f"preset {self.name!r}: anchor {self.anchor!r} contains {inside}, which it should replace"
            )

    @property
    def words(self) -> list[str]:
        """Every term and alias."""
        return [w for t in self.terms for w in self.names(t)]

    def names(self, term: str) -> tuple[str, ...]:
        """The term and its aliases."""
        return (term, *self.aliases.get(term, ()))

    def prompts(self, word: str) -> list[str]:
        """The templates with ``word`` in the slot."""
        return [t.format(name=word) for t in self.templates]

    def with_terms(self, extra: Sequence[str]) -> Preset:
        """More terms (``NAME`` or ``NAME=ALIAS,...``); a term or alias already listed gains the new aliases."""
        terms, aliases = list(self.terms), {t: list(self.names(t)[1:]) for t in self.terms}
        for text in extra:
            name, more = parse_concept(text)
            owner = next((t for t in terms if name in (t, *aliases[t])), None)
            if owner is None:
                terms.append(name)
                owner, aliases[name] = name, []
            known = set(self.words) | {w for t in terms for w in (t, *aliases[t])}
            aliases[owner] += [a for a in dict.fromkeys(more) if a not in known]
        return dataclasses.replace(
            self, terms=tuple(terms), aliases={t: tuple(a) for t, a in aliases.items() if a}
        )


def known_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.parent.name for p in PRESET_DIR.glob(f"*/{PRESET_FILE}"))


def preset_path(name_or_path: str | Path) -> Path:
    """The shipped preset called ``name_or_path``, else a path to a preset JSON file."""
    if (PRESET_DIR / str(name_or_path) / PRESET_FILE).is_file():
        return PRESET_DIR / str(name_or_path) / PRESET_FILE
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return path
    raise FmnPatchError(
        f"unknown preset {str(name_or_path)!r}; known presets: {', '.join(known_presets())} "
        f"(or a path to a preset .json file like {PRESET_DIR / 'nsfw' / PRESET_FILE})"
    )


def load_preset(name_or_path: str | Path = "nsfw") -> Preset:
    """A shipped preset (``"nsfw"``) or one from a JSON file of the same layout."""
    path = preset_path(name_or_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Preset(
            name=data["name"],
            category=data["category"],
            terms=tuple(t["name"] for t in data["terms"]),
            aliases={t["name"]: tuple(t["aliases"]) for t in data["terms"] if t.get("aliases")},
            templates=tuple(data["templates"]),
            eval_prompts=tuple(data.get("eval_prompts", ())),
            anchor=data["anchor"],
            description=data.get("description", ""),
        )
    except json.JSONDecodeError as e:
        raise FmnPatchError(f"preset {str(path)!r} is not valid JSON: {e}") from e
    except KeyError as e:
        raise FmnPatchError(
            f"preset {str(path)!r} lacks the field {e}; see {PRESET_DIR / 'nsfw' / PRESET_FILE}"
        ) from e


def preset_concepts(preset: Preset, anchor: str | None = None) -> list[Concept]:
    """The terms as concepts for ``edit_patch`` and ``train_patch``: each carries its aliases, the preset's category
    and templates, and ``anchor`` (default: the preset's)."""
    target = preset.anchor if anchor is None else anchor
    return [
        Concept(t, preset.category, preset.aliases.get(t, ()), target, preset.templates) for t in preset.terms
    ]
