"""The images role (``family.images``): latents from images, and images from prompts with the pipeline's own call.

A family answers its default image side (``pixel_size``); it may add keyword arguments to every sampler call
(``sampler_kwargs``) and unpack the sampler's latents (``unpack``). Encoding through the VAE and sampling in seeded
batches are the same for every diffusers pipeline and are implemented here."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import FmnPatchError
from ..progress import phase
from .role import Role
from .stepping import step_callback, step_reporter


class Images(Role, ABC):
    """Image size, VAE latents and sampling."""

    @abstractmethod
    def pixel_size(self) -> int:
        """The default image side in pixels."""

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Latents (N, ...) of images (N, 3, H, W) in [-1, 1], in the denoiser's latent scale, float32 on CPU."""
        vae = self.pipe.vae
        latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * vae.config.scaling_factor).float().cpu()

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        steps: int,
        guidance: float,
        output: str = "pt",
        batch_size: int = 64,
        height: int | None = None,
        width: int | None = None,
        progress: bool = False,
        desc: str = "generating",
    ) -> Any:
        """One image per (prompt, seed), prompt-major, each from its own seeded generator, ``batch_size`` per
        pipeline call. ``output``: ``pt`` (N, 3, H, W) in [0, 1], ``latent`` (N, ...) or ``pil`` (a list).

        The same batch size gives the same images; another batch size may change them in the last float bits."""
        jobs = [(p, s) for p in prompts for s in seeds]
        parts: list[Any] = []
        size = {"height": height, "width": width}
        with phase(desc, len(jobs) * steps, "steps") if progress else contextlib.nullcontext() as bar:
            for i in range(0, len(jobs), batch_size):
                chunk = jobs[i : i + batch_size]
                on_step = step_reporter(bar, i, len(chunk), len(jobs))
                parts.append(
                    self.draw(chunk, steps=steps, guidance=guidance, output=output, on_step=on_step, **size)
                )
        if output == "pil":
            return [image for part in parts for image in part]
        return torch.cat(parts)

    def draw(
        self,
        pairs: Sequence[tuple[str, int]],
        *,
        steps: int,
        guidance: float,
        output: str = "pt",
        height: int | None = None,
        width: int | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> Any:
        """One pipeline call: an image per (prompt, seed) pair, each from its own seeded generator; ``on_step``
        is called after each sampler step."""
        timesteps = self.family.noise.num_train_timesteps
        if steps > timesteps:
            raise FmnPatchError(
                f"steps={steps} is more than this base's scheduler has timesteps ({timesteps}); "
                f"give --steps {timesteps} or fewer"
            )
        extra = self.sampler_kwargs()
        extra.update({k: v for k, v in (("height", height), ("width", width)) if v is not None})
        if on_step is not None:
            extra["callback_on_step_end"] = step_callback(on_step)
        out = self.pipe(
            [p for p, _ in pairs],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(s) for _, s in pairs],
            output_type=output,
            **extra,
        )
        images = out.images
        if output == "latent":
            images = self.unpack(images, extra.get("height"), extra.get("width"))
        return images if output == "pil" else images.float().cpu()

    def sampler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every pipeline call of this family gets (image size, text length)."""
        return {}

    def unpack(self, latents: torch.Tensor, height: int | None, width: int | None) -> torch.Tensor:
        """The sampler's latent output in the (N, C, h, w) layout ``encode_images`` gives."""
        return latents
