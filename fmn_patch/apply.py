"""Putting patches on a pipeline: check, stack (unfused, removable), fuse, and save a full pipeline.

Built on diffusers' own LoRA verbs (``load_lora_weights``, ``set_adapters``, ``fuse_lora``, ``delete_adapters``),
so a patch applied here behaves exactly as one loaded by stock diffusers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import target_shapes
from .errors import BaseMismatchError, FmnPatchError
from .patch import Patch
from .targets import target_hash

ADAPTER_PREFIX = "fmn"


class BaseMismatchWarning(UserWarning):
    """The patch was made for another base (e.g. a fine-tune of it); it may still work."""


def check_compatible(pipe: Any, patch: Patch, *, strict: bool = False, base_hash: str | None = None) -> None:
    """Refuse a patch whose modules or shapes do not fit the UNet; warn (or, if ``strict``, refuse) on a base mismatch.

    ``base_hash`` may be given to skip hashing the UNet again when checking several patches.
    """
    shapes = target_shapes(pipe)
    for module, (a, b) in patch.factors.items():
        if module not in shapes:
            raise BaseMismatchError(
                f"patch module {module} does not exist in this UNet; the patch was made for another architecture "
                f"({patch.info.architecture}, base {patch.info.base_model or 'unknown'})"
            )
        out_features, in_features = shapes[module]
        if a.shape[1] != in_features or b.shape[0] != out_features:
            raise BaseMismatchError(
                f"shape mismatch at {module}: patch delta is {b.shape[0]}x{a.shape[1]}, the UNet layer is "
                f"{out_features}x{in_features}; the patch was made for another architecture "
                f"({patch.info.architecture})"
            )
    if patch.info.base_hash:
        current = base_hash or target_hash(pipe.unet)
        if current != patch.info.base_hash:
            message = (
                f"patch '{patch.info.title or patch.concept_names}' was made for base "
                f"{patch.info.base_model or '?'} (target hash {patch.info.base_hash[:12]}), this base has target "
                f"hash {current[:12]} ({getattr(pipe, '_fmn_base_ref', None) or pipe.name_or_path or '?'}); "
                "fine-tunes of the same architecture usually work, pass --strict to refuse"
            )
            if strict:
                raise BaseMismatchError(message)
            warnings.warn(message, BaseMismatchWarning, stacklevel=2)


def apply_patches(
    pipe: Any, patches: Sequence[Patch], weights: Sequence[float] | None = None, *, strict: bool = False
) -> list[str]:
    """Load patches as unfused LoRA adapters and activate them together, each scaled by its weight.

    Returns the adapter names; ``remove_patches(pipe, names)`` restores the base weights bit for bit.
    """
    if not patches:
        raise FmnPatchError("no patch given; pass at least one .safetensors patch")
    weights = _check_weights(patches, weights)
    base_hash = target_hash(pipe.unet) if any(p.info.base_hash for p in patches) else None
    for patch in patches:
        check_compatible(pipe, patch, strict=strict, base_hash=base_hash)
    existing = set(_adapter_names(pipe))
    names = []
    for patch in patches:
        name = _fresh_name(existing)
        existing.add(name)
        pipe.load_lora_weights(patch.state_dict(), adapter_name=name)
        names.append(name)
    active = [n for n in _active_adapters(pipe) if n not in names]
    pipe.set_adapters(active + names, adapter_weights=[1.0] * len(active) + list(weights))
    return names


def remove_patches(pipe: Any, names: Sequence[str] | None = None) -> None:
    """Delete the given adapters (all of them when ``names`` is None); the base weights are untouched. When none
    is left, the peft wrappers go too: the UNet has its original modules and state-dict keys again."""
    names = list(names) if names is not None else _adapter_names(pipe)
    if names:
        pipe.delete_adapters(names)
    if not _adapter_names(pipe):
        pipe.unload_lora_weights()


def fuse_patches(
    pipe: Any, patches: Sequence[Patch], weights: Sequence[float] | None = None, *, strict: bool = False
) -> Any:
    """Fold the weighted stack into the UNet's weights and drop the adapters: a plain pipeline again."""
    names = apply_patches(pipe, patches, weights, strict=strict)
    pipe.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=names)
    pipe.unload_lora_weights()
    return pipe


def save_pipeline(pipe: Any, output: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """``save_pretrained`` into a temp folder beside ``output``, then rename it into place (safetensors only)."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FmnPatchError(f"{output} already exists; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if output.exists():
            old = output.with_name(f".{output.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            output.rename(old)
            tmp.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _check_weights(patches: Sequence[Patch], weights: Sequence[float] | None) -> list[float]:
    if weights is None or len(weights) == 0:
        return [1.0] * len(patches)
    if len(weights) == 1 and len(patches) > 1:
        return [float(weights[0])] * len(patches)
    if len(weights) != len(patches):
        raise FmnPatchError(
            f"got {len(weights)} weights for {len(patches)} patches; give one --weight per patch, or one for all"
        )
    return [float(w) for w in weights]


def _adapter_names(pipe: Any) -> list[str]:
    config = getattr(pipe.unet, "peft_config", None) or {}
    return list(config)


def _active_adapters(pipe: Any) -> list[str]:
    if not _adapter_names(pipe):
        return []
    return list(pipe.get_active_adapters())


def _fresh_name(existing: set[str]) -> str:
    i = 0
    while f"{ADAPTER_PREFIX}_{i}" in existing:
        i += 1
    return f"{ADAPTER_PREFIX}_{i}"
