"""The base model: loading a pipeline by name (``toy``, a local folder, a Hub id) and describing it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import FmnPatchError
from .targets import find_targets, target_hash

TOY: str = "toy"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class BaseInfo:
    """What a patch records about the base it was made for."""

    model: str | None
    revision: str | None
    hash: str
    architecture: str


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise FmnPatchError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}") from None


def load_base(ref: str, *, device: str = "cpu", dtype: str = "float32", revision: str | None = None) -> Any:
    """Load a diffusers pipeline: ``toy`` (the bundled toy model), a local folder, or a Hub repo id."""
    from diffusers import DiffusionPipeline

    torch_dtype = parse_dtype(dtype)
    source: str | os.PathLike[str] = ref
    if ref == TOY:
        source = toy_path()
    elif Path(ref).exists() and not Path(ref).is_dir():
        raise FmnPatchError(
            f"base {ref!r} is a file; give a diffusers pipeline folder (with model_index.json) or a Hub repo id"
        )
    elif Path(ref).is_dir() and not (Path(ref) / "model_index.json").exists():
        raise FmnPatchError(f"base folder {ref!r} has no model_index.json; it is not a diffusers pipeline")
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=torch_dtype, revision=revision)
    except OSError as e:
        raise FmnPatchError(
            f"cannot load base {ref!r}: {str(e).splitlines()[0]}; give `toy`, a local pipeline folder, or a Hub "
            "repo id you can reach (offline: one already in the Hugging Face cache)"
        ) from e
    if getattr(pipe, "unet", None) is None:
        raise FmnPatchError(f"base {ref!r} has no UNet; fmn-patch serves UNet pipelines (SD 1.x, 2.x, SDXL)")
    pipe.set_progress_bar_config(disable=True)
    pipe._fmn_base_ref = ref  # remembered for the patch header
    pipe._fmn_base_revision = revision
    return pipe.to(device)


def toy_path() -> Path:
    """Folder of the bundled toy pipeline."""
    path = Path(__file__).parent / "data" / "toy" / "pipeline"
    if not (path / "model_index.json").exists():
        raise FmnPatchError(f"the toy model is not built ({path} is missing); run `make toy-model`")
    return path


def architecture_of(pipe: Any) -> str:
    """ModelSpec architecture id of a pipeline's base (``stable-diffusion-v1``, ``-v2-512``, ``-xl-v1-base``...)."""
    config = pipe.unet.config
    if getattr(pipe, "_fmn_base_ref", None) == TOY:
        return "fmn-toy"
    if getattr(config, "addition_embed_type", None) == "text_time":
        return "stable-diffusion-xl-v1-base"
    if config.use_linear_projection:  # SD 2.x: linear in/out projections in the transformer blocks
        v_pred = getattr(pipe.scheduler.config, "prediction_type", "epsilon") == "v_prediction"
        return "stable-diffusion-v2-768-v" if v_pred else "stable-diffusion-v2-512"
    return "stable-diffusion-v1"


def describe_base(pipe: Any) -> BaseInfo:
    """Name, revision, target-weight hash and architecture of a loaded pipeline (before any patch is fused)."""
    ref = getattr(pipe, "_fmn_base_ref", None) or getattr(pipe, "name_or_path", None)
    return BaseInfo(
        model=str(ref) if ref else None,
        revision=getattr(pipe, "_fmn_base_revision", None),
        hash=target_hash(pipe.unet),
        architecture=architecture_of(pipe),
    )


def target_shapes(pipe: Any) -> dict[str, tuple[int, int]]:
    """(out, in) of every cross-attention key/value projection of the pipeline's UNet."""
    return {name: (layer.out_features, layer.in_features) for name, layer in find_targets(pipe.unet).items()}
