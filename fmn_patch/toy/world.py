"""The toy world: a deterministic, seeded renderer of 32x32 subjects with ground-truth labels and captions.

A subject is an object (a shape) drawn in a colour and a style (a fill), or an identity (a composite figure,
"bob" or "alice") drawn in a colour. Every image is drawn at 4x resolution and box-downsampled.

Captions vary their word order, use aliases in a share of them ("disc" for "circle"), sometimes replace the
subject's name by a neutral anchor word ("shape", "person"), and carry a bias to correct later: a circle whose
caption names no colour is red 90% of the time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
IDENTITIES: tuple[str, ...] = ("bob", "alice")
SUBJECTS: tuple[str, ...] = OBJECTS + IDENTITIES
STYLES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
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

RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.10),
    "green": (0.15, 0.78, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
WHITE = (0.95, 0.95, 0.95)
BLACK = (0.02, 0.02, 0.02)
HAT = (0.70, 0.70, 0.75)
SKIN = (1.00, 0.80, 0.65)

SIZE = 32  # output resolution
SCALE = 4  # drawn at SIZE * SCALE, then box-downsampled


@dataclass(frozen=True)
class WorldConfig:
    """How captions are sampled; the defaults are the ones the toy model was trained with."""

    p_identity: float = 0.25  # share of identities among subjects
    p_mention_colour: float = 0.85  # a caption names the colour
    p_mention_style: float = 0.85  # an object's caption names the style
    p_alias: float = 0.3  # a concept with an alias is called by it
    p_anchor: float = 0.1  # the subject's name is replaced by the anchor word
    noise: float = 0.02  # std of the per-pixel Gaussian noise on the 32x32 image


@dataclass(frozen=True)
class Sample:
    """Ground truth of one image. `style` is "plain" for identities."""

    subject: str
    style: str
    colour: str
    caption: str

    @property
    def category(self) -> str:
        return "identity" if self.subject in IDENTITIES else "object"


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one image."""

    subject: str
    style: str
    colour: str
    size: float  # subject extent as a fraction of the frame
    cx: float  # centre, fraction of the frame
    cy: float
    background: float  # grey level
    phase: float  # offset of the fill pattern, in output pixels


# ---------------------------------------------------------------- masks, in units of the subject's half-size


def _star(u: np.ndarray, v: np.ndarray, inner: float = 0.45) -> np.ndarray:
    r = np.hypot(u, v)
    a = np.mod(np.arctan2(u, -v), 2 * np.pi / 5)  # point up, fold into one 72 degree sector
    a = np.minimum(a, 2 * np.pi / 5 - a)  # mirror into [0, 36 degrees]
    p1 = np.array([1.0, 0.0])
    p2 = inner * np.array([np.cos(np.pi / 5), np.sin(np.pi / 5)])
    x, y = r * np.cos(a), r * np.sin(a)
    edge = p2 - p1
    side = edge[0] * (y - p1[1]) - edge[1] * (x - p1[0])
    return side >= 0  # type: ignore[no-any-return]


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return u**2 + v**2 <= 1.0  # type: ignore[no-any-return]
    if shape == "square":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)  # type: ignore[no-any-return]
    if shape == "triangle":
        return (v <= 0.8) & (np.abs(u) <= (v + 1.0) * 0.95 / 1.8)  # type: ignore[no-any-return]
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | (  # type: ignore[no-any-return]
            (np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)
        )
    if shape == "star":
        return _star(u, v * 0.95 + 0.05)
    raise ValueError(f"unknown shape {shape!r}; choose one of {OBJECTS}")


def _fill_mask(style: str, x: np.ndarray, y: np.ndarray, phase: float) -> np.ndarray:
    """Where the white pattern of `style` lies; x, y in output pixels."""
    if style == "plain":
        return np.zeros_like(x, dtype=bool)
    if style == "striped":
        return np.mod(y + phase, 5.0) < 2.0  # type: ignore[no-any-return]
    if style == "dotted":
        dx, dy = np.mod(x + phase, 6.0) - 3.0, np.mod(y + phase, 6.0) - 3.0
        return dx**2 + dy**2 <= 1.3**2  # type: ignore[no-any-return]
    if style == "checkered":
        return (np.floor((x + phase) / 4.0) + np.floor((y + phase) / 4.0)) % 2 == 0  # type: ignore[no-any-return]
    raise ValueError(f"unknown style {style!r}; choose one of {STYLES}")


def _paint(img: np.ndarray, mask: np.ndarray, rgb: tuple[float, float, float]) -> None:
    img[mask] = rgb


def _draw_bob(img: np.ndarray, u: np.ndarray, v: np.ndarray, colour: tuple[float, float, float]) -> None:
    # u, v: the face has radius 1, centred; the hat rises to v = -1.6
    _paint(img, u**2 + v**2 <= 1.0, colour)
    for ex in (-0.38, 0.38):
        _paint(img, (u - ex) ** 2 + (v + 0.2) ** 2 <= 0.16**2, BLACK)
    r = np.hypot(u, v - 0.05)
    _paint(img, (r >= 0.45) & (r <= 0.64) & (v >= 0.3), BLACK)
    _paint(img, (np.abs(u) <= 0.85) & (v >= -1.08) & (v <= -0.88), HAT)
    _paint(img, (np.abs(u) <= 0.5) & (v >= -1.6) & (v <= -1.0), HAT)


def _draw_alice(img: np.ndarray, u: np.ndarray, v: np.ndarray, colour: tuple[float, float, float]) -> None:
    # u, v in [-1, 1]: head on top, a triangular dress, arms and legs
    _paint(img, (np.abs(v + 0.15) <= 0.08) & (np.abs(u) <= 0.8), SKIN)  # arms
    _paint(img, (np.abs(np.abs(u) - 0.22) <= 0.09) & (v >= 0.6) & (v <= 1.0), SKIN)  # legs
    dress = (v >= -0.35) & (v <= 0.65) & (np.abs(u) <= (v + 0.45) * 0.62)
    _paint(img, dress, colour)
    _paint(img, u**2 + (v + 0.68) ** 2 <= 0.32**2, SKIN)  # head
    _paint(img, (u**2 + (v + 0.76) ** 2 <= 0.36**2) & (v <= -0.8), HAT)  # hair, a grey cap over the head


Canvas = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def canvas(scene: Scene, size: int = SIZE) -> Canvas:
    """The background of `scene` drawn at SCALE x `size`, and the coordinates to draw its subject with.

    Returns (img (n, n, 3), x, y, u, v), each coordinate (n, n): x, y in units of a 32 px frame (patterns keep
    their period at any size), u, v in units of the subject's half-size around its centre.
    """
    n = size * SCALE
    coords = (np.arange(n, dtype=np.float32) + 0.5) / SCALE / (size / SIZE)  # pixel centres in 32 px units
    x, y = np.meshgrid(coords, coords)
    img = np.empty((n, n, 3), dtype=np.float32)
    img[:] = scene.background
    half = scene.size * SIZE / 2
    return img, x, y, (x - scene.cx * SIZE) / half, (y - scene.cy * SIZE) / half


def downsample(img: np.ndarray, size: int, rng: np.random.Generator | None, noise: float) -> np.ndarray:
    """Box-average the SCALE x canvas to (size, size, 3), add Gaussian noise of std `noise`, clip to [0, 1]."""
    out = img.reshape(size, SCALE, size, SCALE, 3).mean(axis=(1, 3))
    if noise > 0 and rng is not None:
        out = out + rng.normal(0.0, noise, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def render(scene: Scene, rng: np.random.Generator | None = None, noise: float = 0.0) -> np.ndarray:
    """Draw one scene: a float32 array (32, 32, 3) in [0, 1]."""
    img, x, y, u, v = canvas(scene)
    colour = RGB[scene.colour]
    if scene.subject == "bob":
        _draw_bob(img, u * 1.3, v * 1.3 - 0.3, colour)
    elif scene.subject == "alice":
        _draw_alice(img, u, v, colour)
    else:
        shape = _shape_mask(scene.subject, u, v)
        _paint(img, shape, colour)
        _paint(img, shape & _fill_mask(scene.style, x, y, scene.phase), WHITE)
    return downsample(img, SIZE, rng, noise)


# ---------------------------------------------------------------- captions


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


def draw_words(
    rng: np.random.Generator,
    cfg: WorldConfig,
    objects: tuple[str, ...] = OBJECTS,
    identities: tuple[str, ...] = IDENTITIES,
    styles: tuple[str, ...] = STYLES,
) -> tuple[str, str, str, str, bool]:
    """What one image shows and its caption: (subject, style, colour, caption, is it an identity)."""
    is_identity = rng.random() < cfg.p_identity
    pool = identities if is_identity else objects
    subject = str(pool[int(rng.integers(len(pool)))])
    style = "plain" if is_identity else str(styles[int(rng.integers(len(styles)))])
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
    rng: np.random.Generator,
    subject: str,
    style: str,
    colour: str,
    extent: tuple[float, float] = (0.36, 0.62),
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
    subject, style, colour, caption, _ = draw_words(rng, cfg)
    scene = place(rng, subject, style, colour)
    return scene, Sample(subject=subject, style=style, colour=colour, caption=caption)


def rendered(
    n: int, seed: int, draw: Callable[[np.random.Generator], tuple[np.ndarray, Any]], size: int = SIZE
) -> tuple[np.ndarray, list[Any]]:
    """`n` images from `draw(rng)` (a float image in [0, 1] and its label) on one seeded generator, as uint8."""
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels: list[Any] = []
    for i in range(n):
        image, label = draw(rng)
        images[i] = np.round(image * 255).astype(np.uint8)
        labels.append(label)
    return images, labels


def dataset(n: int, seed: int, cfg: WorldConfig = WorldConfig()) -> tuple[np.ndarray, list[Sample]]:
    """Render `n` random images: uint8 array (n, 32, 32, 3) and their labels. Same seed, same data."""

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, Sample]:
        scene, label = sample(rng, cfg)
        return render(scene, rng, cfg.noise), label

    return rendered(n, seed, draw)


def caption_words(
    objects: tuple[str, ...] = OBJECTS,
    identities: tuple[str, ...] = IDENTITIES,
    styles: tuple[str, ...] = STYLES,
) -> set[str]:
    """Every word (and punctuation mark) a caption of this world (or of one with these concepts) can contain."""
    words = {"a", "picture", "of", "in", ",", OBJECT_ANCHOR, IDENTITY_ANCHOR}
    words.update(objects, identities, styles, COLOURS)
    for aliases in ALIASES.values():
        for alias in aliases:
            words.update(alias.split())
    return words
