"""How the toy world's subjects are drawn (`fmn_patch.toy.world` says what is drawn): shape masks, fill patterns
and the identity bust, on a canvas at 4x the output resolution that is box-downsampled.

Masks are boolean arrays over the canvas, computed in units of the subject's half-size around its centre (u, v);
fill patterns in units of a 32 px frame (x, y), so that they keep their period at any output size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.10),
    "green": (0.15, 0.78, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.10),
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
WHITE = (0.95, 0.95, 0.95)
BLACK = (0.02, 0.02, 0.02)
SKIN = (1.00, 0.80, 0.65)
BEARD = (0.25, 0.16, 0.10)

SIZE = 32  # default output resolution
SCALE = 4  # drawn at size * SCALE, then box-downsampled


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
    phase: float  # offset of the fill pattern, in 32 px units


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


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where the object `shape` lies; u, v in units of its half-size around its centre."""
    au, av, r = np.abs(u), np.abs(v), np.hypot(u, v)
    hu, hv = 1.15 * u, 1.15 * -(v + 0.05)  # the heart's curve, point down
    masks = {
        "circle": lambda: u**2 + v**2 <= 1.0,
        "square": lambda: (au <= 0.85) & (av <= 0.85),
        "triangle": lambda: (v <= 0.8) & (au <= (v + 1.0) * 0.95 / 1.8),
        "cross": lambda: ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95)),
        "star": lambda: _star(u, v * 0.95 + 0.05),
        "diamond": lambda: au + av <= 1.0,
        "heart": lambda: (hu**2 + hv**2 - 1) ** 3 - hu**2 * hv**3 <= 0,
        "crescent": lambda: (r <= 1.0) & (np.hypot(u - 0.5, v + 0.15) > 0.75),
        "ring": lambda: (r <= 1.0) & (r >= 0.55),
        "arrow": lambda: ((av <= 0.22) & (u >= -0.95) & (u <= 0.15)) | ((u >= 0.05) & (av <= 0.95 - u)),
        "semicircle": lambda: (np.hypot(u, v - 0.4) <= 1.0) & (v <= 0.4),
        "tee": lambda: ((v >= -0.9) & (v <= -0.5) & (au <= 0.95)) | ((au <= 0.24) & (v >= -0.5) & (v <= 0.95)),
        "hourglass": lambda: (au <= av * 0.95 + 0.06) & (av <= 0.92),
        "house": lambda: ((au <= 0.72) & (v >= -0.1) & (v <= 0.9)) | ((v >= -0.95) & (v < -0.1) & (au <= v + 0.95)),
        "bar": lambda: (au <= 0.95) & (av <= 0.33),
        "ell": lambda: ((u >= -0.8) & (u <= -0.3) & (av <= 0.9)) | ((au <= 0.8) & (v >= 0.38) & (v <= 0.9)),
    }  # fmt: skip
    if shape not in masks:
        raise ValueError(f"unknown shape {shape!r}; choose one of {tuple(masks)}")
    return masks[shape]()  # type: ignore[no-any-return]


def fill_mask(
    style: str, x: np.ndarray, y: np.ndarray, phase: float, shape: np.ndarray, unit: float = 1.0
) -> np.ndarray:
    """Where the white pattern of `style` lies inside `shape`; x, y in 32 px units, `unit` output px per unit."""
    xp, yp = x + phase, y + phase
    fills = {
        "plain": lambda: np.zeros_like(shape),
        "striped": lambda: np.mod(yp, 5.0) < 2.0,
        "dotted": lambda: (np.mod(xp, 6.0) - 3.0) ** 2 + (np.mod(yp, 6.0) - 3.0) ** 2 <= 1.3**2,
        "checkered": lambda: (np.floor(xp / 4.0) + np.floor(yp / 4.0)) % 2 == 0,
        "hatched": lambda: np.mod(x + y + phase, 6.0) < 2.2,
        "gridded": lambda: (np.mod(xp, 6.0) < 1.3) | (np.mod(yp, 6.0) < 1.3),
        "outlined": lambda: _eroded(shape, 1.6 * SCALE * unit),  # a coloured rim 1.6 units wide, white inside
    }
    if style not in fills:
        raise ValueError(f"unknown style {style!r}; choose one of {tuple(fills)}")
    return shape & fills[style]()  # type: ignore[no-any-return]


def _eroded(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of `mask` at least `radius` (in canvas pixels) from its outside: a square erosion, by shifts."""
    out = mask.copy()
    k = round(radius)
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            out &= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return out


def paint(img: np.ndarray, mask: np.ndarray, rgb: tuple[float, float, float]) -> None:
    img[mask] = rgb


def draw_identity(
    img: np.ndarray, u: np.ndarray, v: np.ndarray, look: Look, top: tuple[float, float, float]
) -> None:
    """A bust in a box of half-size 1: head at the top, shoulders and top below; the top drawn in `top`."""
    torso = (v >= 0.2) & (v <= 1.0) & (np.abs(u) <= 0.5 + 0.45 * (v - 0.2) / 0.8)
    paint(img, torso, top)
    if look.top == "tie":
        paint(img, torso & (np.abs(u) <= 0.07 + 0.12 * np.clip(v - 0.2, 0, 1)) & (v <= 0.95), BLACK)
    hair = HAIR_RGB[look.hair]
    head_v = -0.3
    paint(img, np.hypot(u, v - head_v - 0.05) <= 0.5, hair)  # hair behind and beside the face
    paint(img, (np.hypot(u, v - head_v) <= 0.36) & ~((v < head_v - 0.18) & (np.abs(u) < 0.4)), SKIN)
    if look.face == "glasses":
        lenses = (np.hypot(np.abs(u) - 0.16, v - head_v + 0.02) <= 0.12) | (
            (np.abs(u) <= 0.16) & (np.abs(v - head_v + 0.02) <= 0.035)
        )
        paint(img, lenses, BLACK)
    elif look.face == "beard":
        paint(img, (np.hypot(u, v - head_v) <= 0.37) & (v >= head_v + 0.08), BEARD)
    if look.headwear == "tophat":
        brim = (np.abs(u) <= 0.56) & (np.abs(v - (head_v - 0.42)) <= 0.07)
        crown = (np.abs(u) <= 0.33) & (v >= head_v - 0.98) & (v <= head_v - 0.42)
        paint(img, brim | crown, HEADWEAR_RGB["tophat"])
    elif look.headwear == "cap":
        dome = (np.hypot(u / 1.15, v - (head_v - 0.2)) <= 0.42) & (v <= head_v - 0.22)
        visor = (u >= 0.1) & (u <= 0.8) & (np.abs(v - (head_v - 0.25)) <= 0.06)
        paint(img, dome | visor, HEADWEAR_RGB["cap"])
    elif look.headwear == "crown":
        base = (np.abs(u) <= 0.4) & (v >= head_v - 0.56) & (v <= head_v - 0.36)
        points = (np.abs(u) <= 0.4) & (v >= head_v - 0.85) & (v < head_v - 0.56)
        points &= np.abs(np.mod(u + 0.4, 0.4) - 0.2) <= (v - (head_v - 0.85)) * 0.7
        paint(img, base | points, HEADWEAR_RGB["crown"])


# ---------------------------------------------------------------- the canvas


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
