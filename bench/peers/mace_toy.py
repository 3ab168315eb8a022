"""MACE's data preparation on the toy world: reference images with exact subject masks, prior captions and the
prompt forms, in place of MACE's generated images, Grounded-SAM masks, COCO captions and English templates.

The renderer knows what it draws: a scene rendered once on a black and once on a white background differs by
exactly (1 - coverage) in each pixel, coverage the share of the pixel the subject paints. The mask is the pixels
the subject covers at least half of (Grounded-SAM's mask is binary too); styles get no mask, as in MACE.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fmn_patch.concepts.bench import Bench
from fmn_patch.concepts.templates import expand
from fmn_patch.errors import FmnPatchError
from fmn_patch.toy import world

from .mace import References

#: Images per concept: ``data_preparation.py`` generates 8 ("num_images = 8").
IMAGES = 8


def _config(version: str) -> world.WorldConfig:
    """The world a pipeline was trained on (its training.json's ``world``) must be the one this version draws."""
    if version != world.NAME:
        raise FmnPatchError(
            f"world={version!r}: MACE's references are drawn from this version's toy world, {world.NAME}; "
            "rebuild the pipeline with `make toy-model`"
        )
    return world.WorldConfig()


def subject_mask(scene: world.Scene, size: int = world.SIZE) -> np.ndarray:
    """(H, W) bool: the pixels the scene's subject covers at least half of."""
    black = world.render(dataclasses.replace(scene, background=0.0), size=size)
    white = world.render(dataclasses.replace(scene, background=1.0), size=size)
    coverage = 1.0 - np.abs(white - black).mean(axis=-1)  # (H, W)
    return coverage >= 0.5  # type: ignore[no-any-return]


def toy_references(
    name: str, category: str, version: str = world.NAME, count: int = IMAGES, seed: int = 0
) -> References:
    """``count`` renders of a concept (random colours, places, fills) and, but for a style, its subject's masks."""
    cfg = _config(version)
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(count):
        colour = str(rng.choice(world.COLOURS))
        if category == "style":
            subject, style = str(rng.choice(world.OBJECTS)), name
        else:
            subject, style = name, "plain" if category == "identity" else str(rng.choice(world.STYLES))
        extent = cfg.identity_scale if category == "identity" else cfg.object_scale
        scene = world.place(rng, subject, style, colour, extent)
        images.append(world.render(scene, rng=rng, noise=cfg.noise, size=cfg.size))
        masks.append(subject_mask(scene, cfg.size))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1  # (n, 3, H, W) in [-1, 1]
    mask = torch.from_numpy(np.stack(masks))[:, None]  # (n, 1, H, W)
    return References(pixels.float(), None if category == "style" else mask)


def toy_captions(version: str = world.NAME, count: int = 2000, seed: int = 0) -> list[str]:
    """``count`` captions of the world's training distribution: the toy's COCO."""
    cfg = _config(version)
    rng = np.random.default_rng(seed)
    return [world.draw_words(rng, cfg)[3] for _ in range(count)]


def toy_templates(bench: Bench, category: str) -> list[str]:
    """The bench's templates and paraphrases of ``category`` in every attribute, ``{name}`` as ``{concept}``."""
    forms = [*bench.templates.get(category, ()), *bench.paraphrases.get(category, ())]
    return [t.replace("{name}", "{concept}") for form in forms for t in expand(form, bench.attributes)]
