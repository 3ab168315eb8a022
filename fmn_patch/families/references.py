"""Reference images of a concept, as latents: from a user's folder, or drawn by the base model itself and cached
on disk (safetensors) so a retrain does not redraw them.

The cache key is everything that decides the images: the base's ``Identity.fingerprint`` (every component's weights
and config, the scheduler, the tokenizers, dtype, device), the image size, prompts, seeds, steps and guidance. A
base with adapters loaded bypasses the cache: its images are not the base's.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import FmnPatchError
from ..files import atomic_write
from .base import Base

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def cache_dir() -> Path:
    root = os.environ.get("FMNPATCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(root) / "fmn-patch" / "references"


@torch.no_grad()
def generated_latents(
    base: Base,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    guidance: float,
    cache: bool = True,
) -> torch.Tensor:
    """Latents (N, ...) the base model draws for each prompt and seed, prompt-major, in the denoiser's latent scale."""
    family = base.family
    cache = (
        cache and not family.adapters.adapter_names()
    )  # with adapters loaded these are not the base's images
    path = (
        cache_dir() / f"{cache_key(base, prompts, seeds, steps=steps, guidance=guidance)}.safetensors"
        if cache
        else None
    )
    if path is not None and path.is_file():
        cached = _cached_latents(path, expected_shape(base, len(prompts) * len(seeds)))
        if cached is not None:
            return cached  # else: a damaged or foreign entry, drawn again and replaced below
    # one pipeline call per prompt, all its seeds together
    latents = base.family.images.generate(
        prompts,
        seeds,
        steps=steps,
        guidance=guidance,
        output="latent",
        batch_size=len(seeds),
        progress=True,
        desc="drawing reference images",
    )
    if path is not None:
        try:
            atomic_write(
                path, lambda tmp: safetensors.torch.save_file({"latents": latents}, str(tmp)), overwrite=True
            )
        except FmnPatchError as e:  # an unwritable cache costs time, not the result
            print(f"fmnpatch: reference cache not written: {e}", file=sys.stderr)
    return latents


def expected_shape(base: Base, count: int) -> tuple[int | None, ...]:
    """The shape (N, C, h, w) the base's reference latents have; None where the pipeline does not say (a custom
    VAE without ``latent_channels``): that dimension is not checked."""
    vae = getattr(base.pipe, "vae", None)
    channels = getattr(getattr(vae, "config", None), "latent_channels", None)
    scale = getattr(base.pipe, "vae_scale_factor", None)
    side = (
        base.family.images.pixel_size() // int(scale)
        if isinstance(scale, int | float) and scale > 0
        else None
    )
    return (count, channels if isinstance(channels, int) else None, side, side)


def _cached_latents(path: Path, shape: tuple[int | None, ...]) -> torch.Tensor | None:
    """The latents of a cache entry if it verifies: one float tensor ``latents`` of ``shape``, all finite. A cache
    is this program's own file but not to be trusted: a crash, another version or a hand can have changed it."""
    try:
        tensors = safetensors.torch.load_file(str(path))
    except (OSError, safetensors.SafetensorError):
        return None
    latents = tensors.get("latents")
    if (
        set(tensors) != {"latents"}
        or latents is None
        or not latents.is_floating_point()
        or latents.dim() != len(shape)
        or any(want is not None and have != want for have, want in zip(latents.shape, shape, strict=True))
        or not bool(torch.isfinite(latents).all())
    ):
        print(
            f"fmnpatch: reference cache entry {path.name} does not verify; drawing it again", file=sys.stderr
        )
        return None
    return latents


def cache_key(
    base: Base, prompts: Sequence[str], seeds: Sequence[int], *, steps: int, guidance: float
) -> str:
    """The cache key of a set of reference latents: everything that decides them."""
    parts = [
        base.family.identity.fingerprint(),
        base.family.images.pixel_size(),
        list(prompts),
        list(seeds),
        steps,
        guidance,
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def folder_images(folder: str | os.PathLike[str], size: int) -> torch.Tensor:
    """Every image in ``folder`` as (N, 3, size, size) in [-1, 1]; unreadable files are reported, none is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FmnPatchError(f"--images {str(folder)!r} is not a folder; give a folder of .png/.jpg images")
    images, bad = [], []
    for path in sorted(folder.iterdir()):
        if path.is_dir() or path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            bad.append(f"{path.name} (not an image file)")
            continue
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        except (UnidentifiedImageError, OSError) as e:
            bad.append(f"{path.name} ({e.__class__.__name__})")
            continue
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    if bad:
        print(f"fmnpatch: skipped {len(bad)} file(s) in {folder}: {'; '.join(bad)}", file=sys.stderr)
    if not images:
        raise FmnPatchError(
            f"--images {str(folder)!r} holds no readable image; add .png or .jpg images of the concept"
        )
    return torch.stack(images)


def folder_latents(base: Base, folder: str | os.PathLike[str]) -> torch.Tensor:
    """Latents of every image in ``folder``, resized to the base's image size, encoded one image at a time (an
    SD-1.5 VAE encoder's activations at 512 px take about 0.6 GB per image)."""
    images = folder_images(folder, base.family.images.pixel_size())
    return torch.cat([base.family.images.encode_images(image[None]) for image in images])
