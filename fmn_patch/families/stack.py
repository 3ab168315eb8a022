"""Putting patches on a base: check, stack (unfused, removable), fuse, and save a full pipeline.

Built on diffusers' own LoRA verbs through the family (``load_lora_weights``, ``set_adapters``, ``fuse_lora``,
``delete_adapters``), so a patch applied here behaves exactly as one loaded by stock diffusers. Adapters the caller
loaded before are left loaded and active as they were.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..errors import BaseMismatchError, FmnPatchError, OutputExistsError
from ..files import atomic_folder, slug
from ..format.merge import check_weights
from ..format.patch import Patch
from ..text import printable
from .base import Base, BaseLike, as_base
from .family import Family
from .grads import kept_grads

ADAPTER_PREFIX = "fmn"


class BaseMismatchWarning(UserWarning):
    """The patch was made for another base (e.g. a fine-tune of it); it may still work."""


def check_compatible(
    base: BaseLike,
    patch: Patch,
    *,
    strict: bool = False,
    base_hash: str | None = None,
    encoder_hash: str | None = None,
) -> None:
    """Refuse a patch whose modules or shapes do not fit the base; warn (or, if ``strict``, refuse) on a base
    mismatch. ``base_hash`` and ``encoder_hash`` may be given to skip hashing the base again when checking several
    patches."""
    base = as_base(base)
    family = base.family
    where = f"({printable(patch.info.architecture, 100)}, base {printable(patch.info.base_model or 'unknown', 100)})"
    if patch.component != family.adapters.component:
        raise BaseMismatchError(
            f"the patch sits on {patch.component!r} but this base's patches sit on {family.adapters.component!r}; the "
            f"patch was made for another model family {where}"
        )
    other = _family_serving(patch.info.architecture)
    if (
        other is not None
        and other is not type(family)
        and not family.identity.serves_architecture(patch.info.architecture)
    ):
        raise BaseMismatchError(
            f"the patch was made for a {other.name} model ({patch.info.architecture}); this base is a "
            f"{family.name} model ({base.architecture}): give a base of the patch's architecture"
        )
    for module, (a, b) in patch.factors.items():
        try:
            family.adapters.check_module(module, (b.shape[0], a.shape[1]))
        except BaseMismatchError as e:
            raise BaseMismatchError(f"{e}; the patch was made for another architecture {where}") from None
    for component, factors in sorted(patch.encoders.items()):
        for module, (a, b) in sorted(factors.items()):
            try:
                family.adapters.check_encoder_module(component, module, (b.shape[0], a.shape[1]))
            except BaseMismatchError as e:
                raise BaseMismatchError(f"{e} {where}") from None
    title = printable(patch.info.title or patch.concept_names, 100)
    if patch.info.base_hash:
        current = base_hash or family.identity.target_hash()
        if current != patch.info.base_hash:
            recorded, found = _told_apart(patch.info.base_hash, current)
            _mismatch(
                f"patch '{title}' was made for base {printable(patch.info.base_model or '?', 100)} (target hash "
                f"{recorded}), this base has target hash {found} "
                f"({base.ref or getattr(base.pipe, 'name_or_path', None) or '?'}); fine-tunes of the same "
                "architecture usually work, pass --strict to refuse",
                strict,
            )
    if patch.encoders and patch.info.encoder_hash:
        current_encoders = encoder_hash or family.identity.encoder_hash()
        if current_encoders != patch.info.encoder_hash:
            recorded, found = _told_apart(patch.info.encoder_hash, current_encoders)
            _mismatch(
                f"patch '{title}' changes text-encoder layers made for other text encoders (hash {recorded}, this "
                f"base's {found}): its text-encoder factors were fitted to other weights; pass --strict to refuse",
                strict,
            )


def _told_apart(recorded: str, current: str | None) -> tuple[str, str]:
    """A recorded and a current hash, cut to enough characters to tell them apart (12, else all 64)."""
    current = current or "none"
    shown = 12 if current[:12] != recorded[:12] else 64
    return printable(recorded[:shown]), current[:shown]


def _mismatch(message: str, strict: bool) -> None:
    """A base mismatch: refused under ``strict``, else a warning at ``check_compatible``'s caller."""
    if strict:
        raise BaseMismatchError(message)
    warnings.warn(message, BaseMismatchWarning, stacklevel=3)


def apply_patches(
    base: BaseLike,
    patches: Sequence[Patch],
    weights: Sequence[float] | None = None,
    *,
    strict: bool = False,
) -> list[str]:
    """Load patches as unfused LoRA adapters and activate them together, each scaled by its weight.

    Returns the adapter names; ``remove_patches(base, names)`` restores the base weights bit for bit.
    """
    base = as_base(base)
    family = base.family
    if not patches:
        raise FmnPatchError("no patch given; pass at least one .safetensors patch")
    weights = check_weights(patches, weights)
    base_hash = family.identity.target_hash() if any(p.info.base_hash for p in patches) else None
    recorded = any(p.encoders and p.info.encoder_hash for p in patches)
    encoder_hash = family.identity.encoder_hash() if recorded else None
    for patch in patches:
        check_compatible(base, patch, strict=strict, base_hash=base_hash, encoder_hash=encoder_hash)
    existing = set(family.adapters.adapter_names())
    active = family.adapters.active_adapters()
    names: list[str] = []
    with kept_grads(*family.adapters.modules()):  # peft's verbs set the flags of the adapters already loaded
        try:
            for patch in patches:
                name = _fresh_name(existing)
                existing.add(name)
                family.adapters.load_adapter(patch.state_dict(), name, patch.adapter_metadata())
                names.append(name)
            family.adapters.set_adapters(active + names, [1.0] * len(active) + list(weights))
        except BaseException:
            family.adapters.delete_adapters(names)
            raise
    return names


def remove_patches(base: BaseLike, names: Sequence[str] | None = None) -> None:
    """Delete the given adapters (all of them when ``names`` is None); the base weights are untouched. When none
    is left, the peft wrappers go too: the model has its original modules and state-dict keys again."""
    family = as_base(base).family
    with kept_grads(*family.adapters.modules()):
        family.adapters.delete_adapters(list(names) if names is not None else family.adapters.adapter_names())


def fuse_patches(
    base: BaseLike,
    patches: Sequence[Patch],
    weights: Sequence[float] | None = None,
    *,
    strict: bool = False,
) -> Base:
    """Fold the weighted stack into the model's weights and drop the patches' adapters: a plain pipeline again.

    Adapters loaded before stay loaded, unfused, with their active set restored. Each layer's sum is checked before
    it is written: one that would be NaN or infinite (a float16 overflow) is refused, never saved; the layers fused
    before it stay fused (load the base again)."""
    base = as_base(base)
    family = base.family
    active = family.adapters.active_adapters()
    with kept_grads(*family.adapters.modules()):
        names = apply_patches(base, patches, weights, strict=strict)
        try:
            family.adapters.fuse_adapters(names)
        except ValueError as e:  # peft's safe merge found a layer whose sum is NaN or infinite: never written
            if "NaN" not in str(e):
                raise
            dtype = str(family.adapters.dtype).removeprefix("torch.")
            raise FmnPatchError(
                f"fusing the patches gives NaN or infinite weights in {dtype} (the sum overflows); load the base "
                "in float32 (--dtype float32) or give the patches smaller --weight values"
            ) from e
        finally:
            family.adapters.delete_adapters(names)
            family.adapters.activate([n for n in active if n in family.adapters.adapter_names()])
    return base


def save_pipeline(base: BaseLike, output: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """``save_pretrained`` (safetensors) into a temp folder beside ``output``, published whole: never over an
    existing folder unless ``overwrite``, and a writer that loses a race to the name gets ``OutputExistsError``."""
    pipe = as_base(base).pipe
    return atomic_folder(
        output, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True), overwrite=overwrite
    )


def _family_serving(architecture: str) -> type[Family] | None:
    from ..errors import UnknownNameError
    from .registry import family_for_architecture

    try:
        return family_for_architecture(architecture)
    except UnknownNameError:
        return None


def save_new_pipeline(base: Base, folder: str | os.PathLike[str]) -> Path:
    """``save_pipeline`` to ``folder``, or, when that exists, to the first free ``folder-2``, ``folder-3``, ...:
    never replacing a folder, also when another run takes a name meanwhile."""
    folder = Path(folder)
    for i in range(1, 1000):
        candidate = folder if i == 1 else folder.with_name(f"{folder.name}-{i}")
        if candidate.exists() or candidate.is_symlink():
            continue
        try:
            return save_pipeline(base, candidate)
        except OutputExistsError:
            continue  # taken by another run since the check
    raise FmnPatchError(f"{folder} and 998 numbered folders beside it exist; pass --output DIR")


def default_output(base_ref: str, patches: Sequence[str | os.PathLike[str]]) -> Path:
    """The folder a fused pipeline goes to when none is given: named after the base and the patches,
    ``toy-with-forget-circle``, in the current folder (local paths and Hub ids reduced to their last part)."""
    base = slug(Path(str(base_ref).rstrip("/")).name or str(base_ref)) or "base"
    names = [slug(Path(str(p)).name.removesuffix(".safetensors").split("@")[0]) or "patch" for p in patches]
    return Path(slug(f"{base}-with-{'-and-'.join(names)}", limit=80))


def _fresh_name(existing: set[str]) -> str:
    i = 0
    while f"{ADAPTER_PREFIX}_{i}" in existing:
        i += 1
    return f"{ADAPTER_PREFIX}_{i}"
