"""The toy world and its tiny Stable Diffusion pipeline, the embedded default base model.

Importing this package registers the world by name: the base ``toy`` (its pipeline folder), the bench ``toy``
(``fmn_patch/data/toy/bench.json``) and the judge ``toy`` (the CNN of ``fmn_patch.toy.judge``). A pipeline is
recognised as a toy-world model by its contents (its tokenizer is the toy vocabulary), whatever it was loaded by.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

import torch

from ..concepts.bench import register_bench
from ..evaluation.judges import register_judge
from ..families.registry import NamedBase, register_base
from .paths import DATA_DIR, toy_judge_path, toy_pipeline_path

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = ["TOY", "is_toy", "load_toy_pipeline", "toy_judge_path", "toy_pipeline_path"]

TOY = "toy"


@functools.cache
def _toy_vocab() -> dict[str, int]:
    data = json.loads((toy_pipeline_path() / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    return dict(data["model"]["vocab"])


def is_toy(pipe: Any) -> bool:
    """Whether a loaded pipeline is a toy-world model: its tokenizer is the toy vocabulary at the toy length."""
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None or getattr(tokenizer, "model_max_length", None) != 20:
        return False
    try:
        return dict(tokenizer.get_vocab()) == _toy_vocab()
    except (OSError, KeyError, json.JSONDecodeError):
        return False


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
register_bench(TOY, DATA_DIR / "bench.json")
register_judge(TOY, _load_judge)
