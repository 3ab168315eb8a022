"""ConceptBench-toy v2's world: many identities told apart by visible attributes, next to more objects and styles.

An identity is a bust drawn with four attributes: hair colour, headwear, a face feature and the pattern of its top.
Every combination of them is one identity with a made-up single-token name, so each identity has neighbours that
differ from it in exactly one attribute: the hardest things to keep when it is erased. Captions name the person
(and sometimes the colour of the top), never an attribute, so a model must bind each name to its look.

Objects are shapes drawn in a colour and a style (a white fill pattern), as in v1; v1's ten concepts keep their
names and aliases (``circle``, ``bob``, ``striped``, ...). This module replaces ``world`` once a model trained on it
draws every concept well enough (its card); until then the committed toy model is v1's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import world
from .world import (
    BLACK,
    COLOURS,
    IDENTITY_ANCHOR,
    OBJECT_ANCHOR,
    RGB,
    SCALE,
    SIZE,
    SKIN,
    WHITE,
    Scene,
    _paint,
)
from .world import _fill_mask as _v1_fill_mask
from .world import _shape_mask as _v1_shape_mask

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

#: An identity's attributes and their values, in the order a look is written.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "hair": ("black", "brown", "blond", "grey"),
    "headwear": ("bare", "tophat", "cap", "crown"),
    "face": ("clean", "glasses", "beard"),
    "top": ("shirt", "tie"),
}
HAIR_RGB: dict[str, tuple[float, float, float]] = {
    "black": (0.06, 0.05, 0.05),
    "brown": (0.50, 0.27, 0.08),
    "blond": (0.98, 0.90, 0.55),
    "grey": (0.66, 0.66, 0.70),
}
HEADWEAR_RGB: dict[str, tuple[float, float, float]] = {
    "tophat": (0.35, 0.20, 0.55),  # purple: no clothing colour and no hair colour
    "cap": (0.05, 0.55, 0.60),  # teal
    "crown": (1.00, 0.62, 0.05),  # gold-orange
}
BEARD = (0.25, 0.16, 0.10)

#: v1's two identities keep their names; their looks are combinations of v2's attributes.
KEPT_LOOKS: dict[str, tuple[str, ...]] = {
    "bob": ("brown", "tophat", "clean", "shirt"),  # v1's bob wore a top hat
    "alice": ("grey", "bare", "clean", "shirt"),  # v1's alice had grey hair
}

#: v1's aliases, unchanged ("disc" for "circle", "mister bob", ...).
ALIASES: dict[str, tuple[str, ...]] = world.ALIASES

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


@dataclass(frozen=True)
class Look:
    """The four visible attributes of one identity."""

    hair: str
    headwear: str
    face: str
    top: str

    def values(self) -> tuple[str, str, str, str]:
        return (self.hair, self.headwear, self.face, self.top)

    def differences(self, other: Look) -> int:
        return sum(a != b for a, b in zip(self.values(), other.values(), strict=True))


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


@dataclass(frozen=True)
class WorldConfig(world.WorldConfig):
    """How scenes and captions are sampled: v1's caption shares, more people, and sizes per kind of subject."""

    p_identity: float = 0.5  # share of identities among subjects: there are six identities per object
    size: int = SIZE  # output resolution in pixels
    identity_scale: tuple[float, float] = (0.72, 0.9)  # an identity's extent, fraction of the frame
    # objects as large as people nearly: at v1's (0.36, 0.62) a v2 model drew 16 shapes as blobs (22% after 3,000
    # steps, identities 76%), an object spanning 3 of the 8x8 cells where cross-attention reads the text
    object_scale: tuple[float, float] = (0.5, 0.8)


@dataclass(frozen=True)
class Sample(world.Sample):
    """Ground truth of one image. `style` is "plain" for identities; `look` is None for objects."""

    @property
    def category(self) -> str:
        return "identity" if self.subject in LOOKS else "object"

    @property
    def look(self) -> Look | None:
        return LOOKS.get(self.subject)


# ---------------------------------------------------------------- masks, in units of the subject's half-size


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape in OBJECTS[:5]:
        return _v1_shape_mask(shape, u, v)
    au, av, r = np.abs(u), np.abs(v), np.hypot(u, v)
    masks = {
        "diamond": lambda: au + av <= 1.0,
        "heart": lambda: (
            ((1.15 * u) ** 2 + (1.15 * -(v + 0.05)) ** 2 - 1) ** 3
            - (1.15 * u) ** 2 * (1.15 * -(v + 0.05)) ** 3
            <= 0
        ),
        "crescent": lambda: (r <= 1.0) & (np.hypot(u - 0.5, v + 0.15) > 0.75),
        "ring": lambda: (r <= 1.0) & (r >= 0.55),
        "arrow": lambda: (
            ((av <= 0.22) & (u >= -0.95) & (u <= 0.15)) | ((u >= 0.05) & (av <= (0.95 - u) * 1.0))
        ),
        "semicircle": lambda: (np.hypot(u, v - 0.4) <= 1.0) & (v <= 0.4),
        "tee": lambda: (
            ((v >= -0.9) & (v <= -0.5) & (au <= 0.95)) | ((au <= 0.24) & (v >= -0.5) & (v <= 0.95))
        ),
        "hourglass": lambda: (au <= av * 0.95 + 0.06) & (av <= 0.92),
        "house": lambda: (
            ((au <= 0.72) & (v >= -0.1) & (v <= 0.9)) | ((v >= -0.95) & (v < -0.1) & (au <= v + 0.95))
        ),
        "bar": lambda: (au <= 0.95) & (av <= 0.33),
        "ell": lambda: ((u >= -0.8) & (u <= -0.3) & (av <= 0.9)) | ((au <= 0.8) & (v >= 0.38) & (v <= 0.9)),
    }
    if shape not in masks:
        raise ValueError(f"unknown shape {shape!r}; choose one of {OBJECTS}")
    return masks[shape]()  # type: ignore[no-any-return]


def _fill_mask(
    style: str, x: np.ndarray, y: np.ndarray, phase: float, shape: np.ndarray, unit: float = 1.0
) -> np.ndarray:
    """Where the white pattern of `style` lies inside `shape`; x, y in 32 px units, `unit` output px per unit."""
    if style in STYLES[:4]:
        return shape & _v1_fill_mask(style, x, y, phase)
    if style == "hatched":
        return shape & (np.mod(x + y + phase, 6.0) < 2.2)  # type: ignore[no-any-return]
    if style == "gridded":
        return shape & ((np.mod(x + phase, 6.0) < 1.3) | (np.mod(y + phase, 6.0) < 1.3))  # type: ignore[no-any-return]
    if style == "outlined":
        return shape & _eroded(shape, 1.6 * SCALE * unit)  # a coloured rim 1.6 units wide, white inside
    raise ValueError(f"unknown style {style!r}; choose one of {STYLES}")


def _eroded(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of `mask` at least `radius` (in canvas pixels) from its outside: a square erosion, by shifts."""
    out = mask.copy()
    k = round(radius)
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            out &= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return out


def _draw_identity(
    img: np.ndarray, u: np.ndarray, v: np.ndarray, look: Look, top: tuple[float, float, float]
) -> None:
    """A bust in a box of half-size 1: head at the top, shoulders and top below; the top drawn in `top`."""
    torso = (v >= 0.2) & (v <= 1.0) & (np.abs(u) <= 0.5 + 0.45 * (v - 0.2) / 0.8)
    _paint(img, torso, top)
    if look.top == "tie":
        _paint(img, torso & (np.abs(u) <= 0.07 + 0.12 * np.clip(v - 0.2, 0, 1)) & (v <= 0.95), BLACK)
    hair = HAIR_RGB[look.hair]
    head_v = -0.3
    _paint(img, np.hypot(u, v - head_v - 0.05) <= 0.5, hair)  # hair behind and beside the face
    _paint(img, (np.hypot(u, v - head_v) <= 0.36) & ~((v < head_v - 0.18) & (np.abs(u) < 0.4)), SKIN)
    if look.face == "glasses":
        lenses = (np.hypot(np.abs(u) - 0.16, v - head_v + 0.02) <= 0.12) | (
            (np.abs(u) <= 0.16) & (np.abs(v - head_v + 0.02) <= 0.035)
        )
        _paint(img, lenses, BLACK)
    elif look.face == "beard":
        _paint(img, (np.hypot(u, v - head_v) <= 0.37) & (v >= head_v + 0.08), BEARD)
    if look.headwear == "tophat":
        brim = (np.abs(u) <= 0.56) & (np.abs(v - (head_v - 0.42)) <= 0.07)
        crown = (np.abs(u) <= 0.33) & (v >= head_v - 0.98) & (v <= head_v - 0.42)
        _paint(img, brim | crown, HEADWEAR_RGB["tophat"])
    elif look.headwear == "cap":
        dome = (np.hypot(u / 1.15, v - (head_v - 0.2)) <= 0.42) & (v <= head_v - 0.22)
        visor = (u >= 0.1) & (u <= 0.8) & (np.abs(v - (head_v - 0.25)) <= 0.06)
        _paint(img, dome | visor, HEADWEAR_RGB["cap"])
    elif look.headwear == "crown":
        base = (np.abs(u) <= 0.4) & (v >= head_v - 0.56) & (v <= head_v - 0.36)
        points = (np.abs(u) <= 0.4) & (v >= head_v - 0.85) & (v < head_v - 0.56)
        points &= np.abs(np.mod(u + 0.4, 0.4) - 0.2) <= (v - (head_v - 0.85)) * 0.7
        _paint(img, base | points, HEADWEAR_RGB["crown"])


def render(
    scene: Scene, rng: np.random.Generator | None = None, noise: float = 0.0, size: int = SIZE
) -> np.ndarray:
    """Draw one scene: a float32 array (size, size, 3) in [0, 1]."""
    img, x, y, u, v = world.canvas(scene, size)
    colour = RGB[scene.colour]
    look = LOOKS.get(scene.subject)
    if look is not None:
        _draw_identity(img, u, v, look, colour)
    else:
        shape = _shape_mask(scene.subject, u, v)
        _paint(img, shape, colour)
        _paint(img, _fill_mask(scene.style, x, y, scene.phase, shape, size / SIZE), WHITE)
    return world.downsample(img, size, rng, noise)


# ---------------------------------------------------------------- captions and samples


def sample(rng: np.random.Generator, cfg: WorldConfig = WorldConfig()) -> tuple[Scene, Sample]:
    """Draw a random scene and its caption, as v1 does with v2's concepts and sizes."""
    subject, style, colour, caption, is_identity = world.draw_words(rng, cfg, OBJECTS, IDENTITIES, STYLES)
    scene = world.place(rng, subject, style, colour, cfg.identity_scale if is_identity else cfg.object_scale)
    return scene, Sample(subject=subject, style=style, colour=colour, caption=caption)


def dataset(n: int, seed: int, cfg: WorldConfig = WorldConfig()) -> tuple[np.ndarray, list[Sample]]:
    """Render `n` random images: uint8 array (n, size, size, 3) and their labels. Same seed, same data."""

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, Sample]:
        scene, label = sample(rng, cfg)
        return render(scene, rng, cfg.noise, cfg.size), label

    return world.rendered(n, seed, draw, cfg.size)


def caption_words() -> set[str]:
    """Every word (and punctuation mark) a caption of this world can contain."""
    return world.caption_words(OBJECTS, IDENTITIES, STYLES)


# ---------------------------------------------------------------- its ConceptBench


def bench() -> dict[str, Any]:
    """ConceptBench-toy v2 as a bench file's JSON object: every object, style and identity of this world, v1's
    templates, paraphrases and anchors, and each identity's look and neighbours as data for benches that split
    what is kept (``neighbours``). The committed ``fmn_patch/data/toy/bench.json`` is this, written out."""
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
            f"ConceptBench-toy v2 (fmn_patch.toy.world_v2): {len(OBJECTS)} objects (shapes), {len(STYLES) - 1} "
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
