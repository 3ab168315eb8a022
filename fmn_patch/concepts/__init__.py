"""Layer 3, what is forgotten: benches (with their one ``Category`` type), concepts and their resolution,
default anchors, prompt templates, preserve sets and shipped presets (``nsfw``)."""

from ..format.category import CATEGORIES, SHORTHANDS, Category, category_of
from .bench import Bench, Concept, bench_names, load_bench, register_bench
from .presets import Preset, known_presets, load_preset, preset_concepts
from .prompts import ConceptPlan, anchor_for, parse_concept, plan, preserve_prompts, resolve, substitute

__all__ = [
    "CATEGORIES",
    "SHORTHANDS",
    "Bench",
    "Category",
    "Concept",
    "ConceptPlan",
    "Preset",
    "anchor_for",
    "bench_names",
    "category_of",
    "known_presets",
    "load_bench",
    "load_preset",
    "parse_concept",
    "plan",
    "preserve_prompts",
    "preset_concepts",
    "register_bench",
    "resolve",
    "substitute",
]
