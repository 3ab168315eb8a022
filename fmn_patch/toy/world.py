"""The toy world (ConceptBench-toy v2): a deterministic, seeded renderer of subjects with ground-truth labels and
captions, at 32x32 by default.

A subject is an object (one of 16 shapes) drawn in a colour and a style (a white fill pattern), or an identity: a
bust drawn with four attributes (hair colour, headwear, a face feature, the pattern of its top), its top in a
colour. Every combination of the attributes is one identity with a made-up single-token name, so each identity
has neighbours that differ from it in exactly one attribute: the hardest things to keep when it is erased.
Captions name the person (and sometimes the colour of the top), never an attribute, so a model must bind each
name to its look. Every image is drawn at 4x resolution and box-downsampled.

Captions vary their word order, use aliases in a share of them ("disc" for "circle"), sometimes replace the
subject's name by a neutral anchor word ("shape", "person"), and carry a bias to correct later: a circle whose
caption names no colour is red 90% of the time. The first world (v1: 5 objects, 3 styles, the identities bob and
alice) lives in git history; its ten concepts keep their names and aliases here (bob wears the top hat).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .drawing import (
    RGB,
    SIZE,
    WHITE,
    Look,
    Scene,
    canvas,
    downsample,
    draw_identity,
    fill_mask,
    paint,
    shape_mask,
)

#: This world's name, written into what is trained on it (a judge file's header, the trainers' records).
NAME = "v2"

#: v1's objects first, then v2's: 16 shapes.
OBJECTS: tuple[str, ...] = (
    *("circle", "square", "triangle", "cross", "star"),
    *(
        "diamond",
        "heart",
        "crescent",
        "ring",
        "arrow",
        "semicircle",
        "tee",
        "hourglass",
        "house",
        "bar",
        "ell",
    ),
)
#: "plain" is the style anchor, not a concept; six styles can be erased.
STYLES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "hatched", "gridded", "outlined")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")

#: An identity's attributes and their values, in the order a look is written.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "hair": ("black", "brown", "blond", "grey"),
    "headwear": ("bare", "tophat", "cap", "crown"),
    "face": ("clean", "glasses", "beard"),
    "top": ("shirt", "tie"),
}
#: v1's two identities keep their names; their looks are combinations of the attributes.
KEPT_LOOKS: dict[str, tuple[str, ...]] = {
    "bob": ("brown", "tophat", "clean", "shirt"),  # v1's bob wore a top hat
    "alice": ("grey", "bare", "clean", "shirt"),  # v1's alice had grey hair
}
ALIASES: dict[str, tuple[str, ...]] = {
    "circle": ("disc",),
    "striped": ("stripy",),
    "dotted": ("spotted",),
    "bob": ("mister bob",),
}
OBJECT_ANCHOR = "shape"
IDENTITY_ANCHOR = "person"
#: Colour an object is drawn in when its caption names no colour, and how often (the bias to correct).
BIASED_COLOUR: dict[str, tuple[str, float]] = {"circle": ("red", 0.9)}

# ---------------------------------------------------------------- identities


_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("n", "r", "l", "x", "k")


def _made_up_names(count: int, taken: set[str]) -> list[str]:
    """`count` distinct two-syllable names (consonant-vowel-consonant-vowel-consonant), in a fixed order."""
    rng = np.random.default_rng(2026)
    names: list[str] = []
    while len(names) < count:
        parts = [rng.choice(_ONSETS), rng.choice(_VOWELS), rng.choice(_ONSETS), rng.choice(_VOWELS)]
        name = "".join(str(p) for p in parts) + str(rng.choice(_CODAS))
        if name not in taken and name not in names:
            names.append(name)
    return names


def _looks() -> dict[str, Look]:
    combos = list(itertools.product(*ATTRIBUTES.values()))
    kept = {look: name for name, look in KEPT_LOOKS.items()}
    reserved = set(OBJECTS) | set(STYLES) | set(COLOURS) | set(ATTRIBUTES) | {OBJECT_ANCHOR, IDENTITY_ANCHOR}
    reserved |= {value for values in ATTRIBUTES.values() for value in values} | set(kept.values())
    fresh = iter(_made_up_names(len(combos) - len(kept), reserved))
    return {kept[combo] if combo in kept else next(fresh): Look(*combo) for combo in combos}


#: Identity name -> look; one identity per combination of attribute values.
LOOKS: dict[str, Look] = _looks()
IDENTITIES: tuple[str, ...] = tuple(LOOKS)
SUBJECTS: tuple[str, ...] = OBJECTS + IDENTITIES


def neighbours(name: str) -> tuple[str, ...]:
    """The identities whose look differs from `name`'s in exactly one attribute."""
    look = LOOKS[name]
    return tuple(other for other, o in LOOKS.items() if look.differences(o) == 1)


# ---------------------------------------------------------------- what is sampled


@dataclass(frozen=True)
class WorldConfig:
    """How scenes and captions are sampled; the defaults are the ones the toy model was trained with."""

    p_identity: float = 0.5  # share of identities among subjects: there are six identities per object
    p_mention_colour: float = 0.85  # a caption names the colour
    p_mention_style: float = 0.85  # an object's caption names the style
    p_alias: float = 0.3  # a concept with an alias is called by it
    p_anchor: float = 0.1  # the subject's name is replaced by the anchor word
    noise: float = 0.02  # std of the per-pixel Gaussian noise on the output image
    size: int = SIZE  # output resolution in pixels
    identity_scale: tuple[float, float] = (0.72, 0.9)  # an identity's extent, fraction of the frame
    # objects as large as people nearly: at v1's (0.36, 0.62) a v2 model drew 16 shapes as blobs (22% after 3,000
    # steps, identities 76%), an object spanning 3 of the 8x8 cells where cross-attention reads the text
    object_scale: tuple[float, float] = (0.5, 0.8)


@dataclass(frozen=True)
class Sample:
    """Ground truth of one image. `style` is "plain" for identities; `look` is None for objects."""

    subject: str
    style: str
    colour: str
    caption: str

    @property
    def category(self) -> str:
        return "identity" if self.subject in LOOKS else "object"

    @property
    def look(self) -> Look | None:
        return LOOKS.get(self.subject)


def render(
    scene: Scene, rng: np.random.Generator | None = None, noise: float = 0.0, size: int = SIZE
) -> np.ndarray:
    """Draw one scene: a float32 array (size, size, 3) in [0, 1]."""
    img, x, y, u, v = canvas(scene, size)
    colour = RGB[scene.colour]
    look = LOOKS.get(scene.subject)
    if look is not None:
        draw_identity(img, u, v, look, colour)
    else:
        shape = shape_mask(scene.subject, u, v)
        paint(img, shape, colour)
        paint(img, fill_mask(scene.style, x, y, scene.phase, shape, size / SIZE), WHITE)
    return downsample(img, size, rng, noise)


# ---------------------------------------------------------------- captions and samples


def _name(concept: str, rng: np.random.Generator, cfg: WorldConfig) -> str:
    aliases = ALIASES.get(concept, ())
    if aliases and rng.random() < cfg.p_alias:
        return str(aliases[int(rng.integers(len(aliases)))])
    return concept


def object_caption(words: dict[str, str | None], rng: np.random.Generator) -> str:
    """Join subject, optional colour and style words in one of several word orders."""
    subject, colour, style = words["subject"], words.get("colour"), words.get("style")
    adjectives = " ".join(w for w in (colour, style) if w)
    t = int(rng.choice(5, p=[0.4, 0.15, 0.15, 0.15, 0.15]))
    if t == 1:
        return ", ".join(w for w in (f"a {subject}", style, colour) if w)
    if t == 2:
        return " ".join(w for w in ("a picture of a", adjectives, subject) if w)
    if t == 3 and adjectives:
        return f"{adjectives} {subject}"
    if t == 4 and colour:
        return " ".join(w for w in ("a", style, subject, "in", colour) if w)
    return " ".join(w for w in ("a", adjectives, subject) if w)


def identity_caption(name: str, colour: str | None, rng: np.random.Generator) -> str:
    article = "a " if name == IDENTITY_ANCHOR else ""
    t = int(rng.integers(4))
    if colour is None:
        return f"a picture of {article}{name}" if t % 2 else f"{article}{name}"
    if t == 0:
        return f"{article}{name} in {colour}"
    if t == 1:
        return f"a picture of {article}{name} in {colour}"
    if t == 2:
        return f"{colour} {name}" if not article else f"a {colour} {name}"
    return f"{article}{name}, {colour}"


def draw_words(rng: np.random.Generator, cfg: WorldConfig) -> tuple[str, str, str, str, bool]:
    """What one image shows and its caption: (subject, style, colour, caption, is it an identity)."""
    is_identity = rng.random() < cfg.p_identity
    pool = IDENTITIES if is_identity else OBJECTS
    subject = str(pool[int(rng.integers(len(pool)))])
    style = "plain" if is_identity else str(STYLES[int(rng.integers(len(STYLES)))])
    mention_colour = rng.random() < cfg.p_mention_colour
    colour = str(COLOURS[int(rng.integers(len(COLOURS)))])
    if not mention_colour and subject in BIASED_COLOUR:
        biased, p = BIASED_COLOUR[subject]
        colour = biased if rng.random() < p else str(rng.choice([c for c in COLOURS if c != biased]))
    anchor = rng.random() < cfg.p_anchor
    if is_identity:
        name = IDENTITY_ANCHOR if anchor else _name(subject, rng, cfg)
        caption = identity_caption(name, colour if mention_colour else None, rng)
    else:
        words: dict[str, str | None] = {
            "subject": OBJECT_ANCHOR if anchor else _name(subject, rng, cfg),
            "colour": colour if mention_colour else None,
            "style": _name(style, rng, cfg) if rng.random() < cfg.p_mention_style else None,
        }
        caption = object_caption(words, rng)
    return subject, style, colour, caption, is_identity


def place(
    rng: np.random.Generator, subject: str, style: str, colour: str, extent: tuple[float, float]
) -> Scene:
    """Where and how large the subject is drawn: its size a uniform share of the frame within `extent`."""
    size = float(rng.uniform(*extent))
    margin = size / 2 + 0.02
    return Scene(
        subject=subject,
        style=style,
        colour=colour,
        size=size,
        cx=float(rng.uniform(margin, 1 - margin)),
        cy=float(rng.uniform(margin, 1 - margin)),
        background=float(rng.uniform(0.02, 0.22)),
        phase=float(rng.uniform(0, 12)),
    )


def sample(rng: np.random.Generator, cfg: WorldConfig = WorldConfig()) -> tuple[Scene, Sample]:
    """Draw a random scene and its caption."""
    subject, style, colour, caption, is_identity = draw_words(rng, cfg)
    scene = place(rng, subject, style, colour, cfg.identity_scale if is_identity else cfg.object_scale)
    return scene, Sample(subject=subject, style=style, colour=colour, caption=caption)


def dataset(n: int, seed: int, cfg: WorldConfig = WorldConfig()) -> tuple[np.ndarray, list[Sample]]:
    """Render `n` random images: uint8 array (n, size, size, 3) and their labels. Same seed, same data."""

    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    rng = np.random.default_rng(seed)
    images = np.empty((n, cfg.size, cfg.size, 3), dtype=np.uint8)
    labels: list[Sample] = []
    for i in range(n):
        scene, label = sample(rng, cfg)
        images[i] = np.round(render(scene, rng, cfg.noise, cfg.size) * 255).astype(np.uint8)
        labels.append(label)
    return images, labels


def caption_words() -> set[str]:
    """Every word (and punctuation mark) a caption of this world can contain."""
    words = {"a", "picture", "of", "in", ",", OBJECT_ANCHOR, IDENTITY_ANCHOR}
    words.update(OBJECTS, IDENTITIES, STYLES, COLOURS)
    for aliases in ALIASES.values():
        for alias in aliases:
            words.update(alias.split())
    return words


# ---------------------------------------------------------------- its ConceptBench


def bench() -> dict[str, Any]:
    """ConceptBench-toy v2 as a bench file's JSON object: every object, style and identity of this world, v1's
    templates, paraphrases and anchors, and each identity's look and neighbours as data for benches that split
    what is kept (``neighbours``). The committed ``fmn_patch/data/toy/bench.json`` is this (``write_bench``)."""
    concepts: list[dict[str, Any]] = [
        *({"name": o, "category": "object"} for o in OBJECTS),
        *({"name": s, "category": "style"} for s in STYLES if s != "plain"),
        *({"name": n, "category": "identity"} for n in IDENTITIES),
    ]
    for c in concepts:
        if c["name"] in ALIASES:
            c["aliases"] = list(ALIASES[c["name"]])
    return {
        "name": "toy",
        "description": (
            f"ConceptBench-toy v2 (fmn_patch.toy.world): {len(OBJECTS)} objects (shapes), {len(STYLES) - 1} "
            f"styles (fills), {len(IDENTITIES)} identities (every combination of hair, headwear, face and top, each "
            f"with a made-up name), each combined with {len(COLOURS)} colours. Judged by the toy judge "
            "(fmn_patch/data/toy/judge.safetensors), identities from the four attribute heads."
        ),
        "judge": "toy",
        "anchors": {"object": OBJECT_ANCHOR, "identity": f"a {IDENTITY_ANCHOR}", "style": "plain"},
        "paraphrases": {
            "object": [
                "{colour}, {name}",
                "an image of a {colour} {name}",
                "the {name} is {colour}",
                "one {name} with {colour}",
            ],
            "style": [
                "{colour}, {name}",
                "an image of a {name} shape in {colour}",
                "the shape is {name} and {colour}",
                "{name} pattern, {colour}",
            ],
            "identity": [
                "{colour}, {name}",
                "an image of {name} in {colour}",
                "the {colour} {name}",
                "{name} is {colour}",
            ],
        },
        "inversion_template": "a {}",
        "attributes": {"colour": list(COLOURS)},
        "templates": {
            "object": ["a {colour} {name}", "a picture of a {colour} {name}"],
            "style": ["a {colour} {name} shape", "a shape, {name}, {colour}"],
            "identity": ["{name} in {colour}", "a picture of {name} in {colour}"],
        },
        "concepts": concepts,
        "looks": {n: dict(zip(ATTRIBUTES, LOOKS[n].values(), strict=True)) for n in IDENTITIES},
        "neighbours": {n: list(neighbours(n)) for n in IDENTITIES},
    }


def write_bench(path: Path) -> Path:
    """Write `bench()` to `path` as JSON, one line per top-level key and per concept, look and neighbour list:
    ``python -m fmn_patch.toy.world`` writes the committed ``fmn_patch/data/toy/bench.json``."""

    def entries(value: list | dict) -> str:
        if isinstance(value, list):
            return "[\n" + ",\n".join(f"    {json.dumps(v)}" for v in value) + "\n  ]"
        return "{\n" + ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()) + "\n  }"

    long = ("concepts", "looks", "neighbours")
    body = ",\n".join(
        f"  {json.dumps(k)}: {entries(v) if k in long else json.dumps(v)}" for k, v in bench().items()
    )
    path.write_text("{\n" + body + "\n}\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    from fmn_patch.toy.paths import DATA_DIR

    print(write_bench(DATA_DIR / "bench.json"))
