"""MACE's data preparation on the toy world: reference images with exact subject masks, prior captions and the
prompt forms, in place of MACE's generated images, Grounded-SAM masks, COCO captions and English templates.

The renderer knows what it draws: a scene rendered once on a black and once on a white background differs by
exactly (1 - coverage) in each pixel, coverage the share of the pixel the subject paints. The mask is the pixels
the subject covers at least half of (Grounded-SAM's mask is binary too); styles get no mask, as in MACE.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Literal

import numpy as np
import torch

from fmn_patch.concepts.bench import Bench
from fmn_patch.concepts.templates import expand
from fmn_patch.errors import FmnPatchError
from fmn_patch.toy import world, world_v2

from .mace import References

World = Literal["v1", "v2"]
#: Images per concept: ``data_preparation.py`` generates 8 ("num_images = 8").
IMAGES = 8


def _module(version: World) -> tuple[ModuleType, world.WorldConfig]:
    if version == "v1":
        return world, world.WorldConfig()
    if version == "v2":
        return world_v2, world_v2.WorldConfig()
    raise FmnPatchError(f"world={version!r} must be 'v1' or 'v2'")


def _render(module: ModuleType, cfg: world.WorldConfig, scene: world.Scene, **kw: object) -> np.ndarray:
    size = getattr(cfg, "size", world.SIZE)
    return module.render(scene, size=size, **kw) if module is world_v2 else module.render(scene, **kw)  # type: ignore[no-any-return]


def subject_mask(module: ModuleType, cfg: world.WorldConfig, scene: world.Scene) -> np.ndarray:
    """(H, W) bool: the pixels the scene's subject covers at least half of."""
    black = _render(module, cfg, dataclasses.replace(scene, background=0.0))
    white = _render(module, cfg, dataclasses.replace(scene, background=1.0))
    coverage = 1.0 - np.abs(white - black).mean(axis=-1)  # (H, W)
    return coverage >= 0.5  # type: ignore[no-any-return]


def toy_references(
    name: str, category: str, version: World, count: int = IMAGES, seed: int = 0
) -> References:
    """``count`` renders of a concept (random colours, places, fills) and, but for a style, its subject's masks."""
    module, cfg = _module(version)
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(count):
        colour = str(rng.choice(world.COLOURS))
        if category == "style":
            subject, style = str(rng.choice(module.OBJECTS)), name
        else:
            subject, style = name, "plain" if category == "identity" else str(rng.choice(module.STYLES))
        extent = getattr(cfg, "identity_scale" if category == "identity" else "object_scale", (0.36, 0.62))
        scene = world.place(rng, subject, style, colour, extent)
        images.append(_render(module, cfg, scene, rng=rng, noise=cfg.noise))
        masks.append(subject_mask(module, cfg, scene))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1  # (n, 3, H, W) in [-1, 1]
    mask = torch.from_numpy(np.stack(masks))[:, None]  # (n, 1, H, W)
    return References(pixels.float(), None if category == "style" else mask)


def toy_captions(version: World, count: int = 2000, seed: int = 0) -> list[str]:
    """``count`` captions of the world's training distribution: the toy's COCO."""
    module, cfg = _module(version)
    rng = np.random.default_rng(seed)
    return [
        world.draw_words(rng, cfg, module.OBJECTS, module.IDENTITIES, module.STYLES)[3] for _ in range(count)
    ]


def toy_templates(bench: Bench, category: str) -> list[str]:
    """The bench's templates and paraphrases of ``category`` in every attribute, ``{name}`` as ``{concept}``."""
    forms = [*bench.templates.get(category, ()), *bench.paraphrases.get(category, ())]
    return [t.replace("{name}", "{concept}") for form in forms for t in expand(form, bench.attributes)]
