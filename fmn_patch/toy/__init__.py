"""The toy world and its tiny Stable Diffusion pipeline, the embedded default base model (`toy`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fmn_patch.toy.paths import toy_judge_path, toy_pipeline_path

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = ["load_toy_pipeline", "toy_judge_path", "toy_pipeline_path"]


def load_toy_pipeline(device: str | torch.device = "cpu") -> StableDiffusionPipeline:
    """Load the committed toy pipeline (32x32 images, DDIM sampler, no safety checker) onto `device`."""
    from diffusers import StableDiffusionPipeline

    path = toy_pipeline_path()
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"no toy pipeline at {path}; train it with `make toy-model`")
    pipe = StableDiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
