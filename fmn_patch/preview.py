"""Side-by-side renders of a base model and the same model with patches applied."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .apply import apply_patches, remove_patches
from .grid import image_grid
from .patch import Patch


@dataclass(frozen=True)
class SampleConfig:
    """How images are drawn: a fixed few-step sampler, deterministic for a seed."""

    steps: int = 20  # denoising steps of the pipeline's own scheduler
    guidance: float = 5.0  # classifier-free guidance scale
    height: int | None = None  # None: the pipeline's default size
    width: int | None = None


def sample(
    pipe: Any, prompt: str, seeds: Sequence[int], config: SampleConfig = SampleConfig()
) -> list[Image.Image]:
    """One image per seed; each seed owns its generator, so images do not depend on batch composition."""
    images = []
    for seed in seeds:
        out = pipe(
            prompt,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            height=config.height,
            width=config.width,
            generator=torch.Generator(device="cpu").manual_seed(seed),
        )
        images.append(out.images[0])
    return images


def preview(
    pipe: Any,
    patches: Sequence[Patch],
    prompts: Sequence[str],
    *,
    weights: Sequence[float] | None = None,
    seeds: Sequence[int] = (0,),
    config: SampleConfig = SampleConfig(),
    strict: bool = False,
) -> Image.Image:
    """A grid with one row per prompt and columns base | patched for each seed; the pipeline is left unpatched."""
    base = [sample(pipe, p, seeds, config) for p in prompts]
    names = apply_patches(pipe, patches, weights, strict=strict)
    try:
        patched = [sample(pipe, p, seeds, config) for p in prompts]
    finally:
        remove_patches(pipe, names)
    rows = [
        [img for pair in zip(b, q, strict=True) for img in pair] for b, q in zip(base, patched, strict=True)
    ]
    columns = [f"{label} s{seed}" for seed in seeds for label in ("base", "patched")]
    scale = max(1, 128 // rows[0][0].size[0])
    return image_grid(rows, row_labels=list(prompts), col_labels=columns, scale=scale)
