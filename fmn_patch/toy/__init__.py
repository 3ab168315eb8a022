"""The toy world and its tiny pipelines: the embedded default base model and its MMDiT sibling.

Importing this package registers the world by name: the bases ``toy`` (a tiny Stable Diffusion UNet pipeline)
and ``toy-sd3`` (a tiny SD3.5-style MMDiT trained on the same world with the same VAE), the bench ``toy``
(``fmn_patch/data/toy/bench.json``) and the judge ``toy`` (the CNN of ``fmn_patch.toy.judge``), which both bases
share. A pipeline is recognised as a toy-world model by its contents (a UNet or an SD3 transformer reading the toy
vocabulary: the committed UNet toy's tokenizer, every word of ``fmn_patch.toy.world`` one token), whatever it was
loaded by; a toy trained on an older world reads other words, so it is not recognised, and ``load_base`` refuses it
by name (rebuild it with ``make toy-model``).
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

import torch

from ..concepts.bench import register_bench
from ..evaluation.judges import register_judge
from ..families.registry import NamedBase, register_base
from .paths import DATA_DIR, toy_judge_path, toy_pipeline_path, toy_sd3_pipeline_path

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = [
    "TOY",
    "TOY_SD3",
    "is_toy",
    "is_toy_sd3",
    "load_toy_pipeline",
    "toy_judge_path",
    "toy_pipeline_path",
    "toy_sd3_pipeline_path",
]

TOY = "toy"
TOY_SD3 = "toy-sd3"


@functools.cache
def _toy_vocab() -> dict[str, int]:
    data = json.loads((toy_pipeline_path() / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    return dict(data["model"]["vocab"])


def _toy_tokenizer(pipe: Any) -> bool:
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None or getattr(tokenizer, "model_max_length", None) != 20:
        return False
    try:
        return dict(tokenizer.get_vocab()) == _toy_vocab()
    except (OSError, KeyError, json.JSONDecodeError):
        return False


def is_toy(pipe: Any) -> bool:
    """Whether a loaded pipeline is the toy UNet model: a UNet reading the toy vocabulary at the toy length."""
    return getattr(pipe, "unet", None) is not None and _toy_tokenizer(pipe)


def is_toy_sd3(pipe: Any) -> bool:
    """Whether a loaded pipeline is the toy MMDiT: an SD3 transformer reading the toy vocabulary."""
    transformer = getattr(pipe, "transformer", None)
    return type(transformer).__name__ == "SD3Transformer2DModel" and _toy_tokenizer(pipe)


def load_toy_pipeline(device: str | torch.device = "cpu") -> StableDiffusionPipeline:
    """Load the committed toy pipeline (32x32 images, DDIM sampler, no safety checker) onto ``device``."""
    from diffusers import StableDiffusionPipeline

    from ..errors import FmnPatchError

    path = toy_pipeline_path()
    if not (path / "model_index.json").exists():
        raise FmnPatchError(f"no toy pipeline at {path}; train it with `make toy-model`")
    pipe = StableDiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _load_judge(_bench: Any, device: str, _weights: str | None) -> Any:
    from .judge import ToyJudge

    return ToyJudge.load(device=device)


register_base(NamedBase(TOY, toy_pipeline_path, is_toy, bench=TOY, architecture="fmn-toy"))
register_base(NamedBase(TOY_SD3, toy_sd3_pipeline_path, is_toy_sd3, bench=TOY, architecture="fmn-toy-sd3"))
register_bench(TOY, DATA_DIR / "bench.json")
register_judge(TOY, _load_judge)
