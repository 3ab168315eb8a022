"""The kohya / AUTOMATIC1111 / ComfyUI LoRA layout of a patch's tensors and header, both ways.

Keys: ``<kohya name>.lora_down.weight`` (= A), ``.lora_up.weight`` (= B) and ``.alpha``; the loaders scale by
alpha / rank, and since our alpha is folded into B the exported alpha equals the rank (scale 1). Which kohya name a
module gets, and the ``ss_*`` keys the UIs read (``ss_base_model_version``, ``ss_v2``, ...), are the model family's
knowledge (``Identity.kohya_names``, ``Identity.kohya_header``); this module lays the tensors out, writes both hashes
of the exported tensors (the ModelSpec hash of its data and ``fmn_patch.tensor_hash``) and reads a kohya-form file
back into a patch through the readers families register (``register_kohya_reader``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import torch

from ..errors import FmnPatchError, PatchFileError
from .header import NAMESPACE, modelspec_hash, tensor_hash
from .targets import kind_for

if (
    TYPE_CHECKING
):  # patch.py reads kohya files through this module: the layout of Patch is all it takes from there
    from .patch import Factors, Patch

SUFFIX: Final = ".kohya.safetensors"  # the kohya export of forget-x.safetensors: forget-x.kohya.safetensors
_KEY = re.compile(
    r"^(?P<stem>lora_[a-z0-9]+_[A-Za-z0-9_]+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$"
)
Pairs = dict[str, tuple[torch.Tensor, torch.Tensor]]  # kohya stem -> (down, up), alpha / rank folded into up
#: a kohya stem -> (text encoder component, module), or None for a stem that is not a text encoder's
EncoderStems = Callable[[str], "tuple[str, str] | None"]
_ENCODER_STEMS: list[EncoderStems] = []
#: a kohya file's pairs and header -> (component, factors by module), or None when the reader does not serve it
KohyaReader = Callable[[Pairs, Mapping[str, str]], "tuple[str, Factors] | None"]
#: stems and header -> {stem: (component, module)}, or None: the reader of families whose stems name one module each
KohyaNames = Callable[[Sequence[str], Mapping[str, str]], dict[str, tuple[str, str]] | None]
_READERS: list[KohyaReader] = []


def kohya_path(path: str | Path) -> Path:
    """Where the kohya export of a patch file goes by default: beside it, ``NAME.kohya.safetensors``."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".safetensors") + SUFFIX)


def register_kohya_reader(reader: KohyaReader) -> KohyaReader:
    """Let a family read kohya stems back into its modules' factors (families call this once, at import); a
    family that fuses projections (Flux's text qkv) splits them here."""
    if reader not in _READERS:
        _READERS.append(reader)
    return reader


def register_kohya_encoder_stems(reader: EncoderStems) -> EncoderStems:
    """Let the text encoders' layers be read back from their kohya stems (``lora_te1_text_model_...``)."""
    if reader not in _ENCODER_STEMS:
        _ENCODER_STEMS.append(reader)
    return reader


def encoder_stem(prefix: str, module: str) -> str:
    """kohya's stem of a text encoder's module: its prefix (``lora_te``, ``lora_te1``, ...) and the module's path
    with ``_`` for ``.``."""
    return f"{prefix}_{module.replace('.', '_')}"


def by_name(names: KohyaNames) -> KohyaReader:
    """A reader for a family whose kohya stems each name one module (the UNet's)."""

    def read(pairs: Pairs, header: Mapping[str, str]) -> tuple[str, Factors] | None:
        mapping = names(sorted(pairs), header)
        components = {component for component, _ in (mapping or {}).values()}
        if mapping is None or len(components) != 1:
            return None
        factors: Factors = {}
        for stem, (_, module) in mapping.items():
            if module in factors:
                raise PatchFileError(f"two kohya names map to {module}; the file is ambiguous")
            factors[module] = pairs[stem]
        return components.pop(), factors

    return read


def to_kohya(
    patch: Patch,
    names: Mapping[str, str],
    keys: Mapping[str, str],
    encoder_prefixes: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of the kohya form of ``patch``; ``names`` maps each module to its kohya key stem
    (e.g. ``lora_unet_down_blocks_0_..._attn2_to_k``), ``keys`` are the family's header keys for the architecture
    (``ss_base_model_version``, ``ss_v2``, ``modelspec.implementation`` of the key format, ...) and
    ``encoder_prefixes`` the stem prefix of each text encoder (``{"text_encoder": "lora_te"}``)."""
    missing = [m for m in patch.modules if m not in names]
    if missing:
        raise FmnPatchError(f"no kohya name for modules {missing[:3]}; the family does not export them")
    taken: dict[str, str] = {}
    for module in patch.modules:
        other = taken.setdefault(names[module], module)
        if other != module:
            raise FmnPatchError(
                f"kohya names collide: {other} and {module} both map to {names[module]}; check the block layout "
                "(e.g. --layers-per-block) so that every module keeps its own weight"
            )
    return layout({names[m]: patch.factors[m] for m in patch.modules}, patch, keys, encoder_prefixes)


def layout(
    stems: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    patch: Patch,
    keys: Mapping[str, str],
    encoder_prefixes: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header for kohya stems and their (down, up) factors, with ``patch``'s header and the family's
    ``keys``; the patch's text-encoder factors get stems from ``encoder_prefixes``. A family whose UIs fuse
    projections (Flux's text q/k/v) builds the fused factors and calls this."""
    stems = {**stems, **_encoder_stems(patch, encoder_prefixes or {})}
    tensors: dict[str, torch.Tensor] = {}
    for key, (a, b) in stems.items():
        tensors[f"{key}.lora_down.weight"] = a.contiguous()
        tensors[f"{key}.lora_up.weight"] = b.contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(a.shape[0]))  # alpha / rank = 1: alpha is folded into B
    rank = max(a.shape[0] for a, _ in stems.values())
    source = patch.header()
    kind = kind_for(patch.component, patch.modules)
    header = {k: v for k, v in source.items() if k.startswith(("modelspec.", f"{NAMESPACE}."))}
    header.update(
        {
            "format": "pt",
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(rank),
            "ss_network_alpha": str(rank),
            "ss_network_args": json.dumps({"target": ",".join(_short(kind.regex, kind.projections))}),
            "ss_output_name": source["modelspec.title"],
            **keys,
            # both hashes are of these tensors, not of the native file's
            "modelspec.hash_sha256": modelspec_hash(tensors),
            f"{NAMESPACE}.tensor_hash": tensor_hash(tensors),
            f"{NAMESPACE}.component": patch.component,
        }
    )
    return tensors, header


def _encoder_stems(patch: Patch, prefixes: Mapping[str, str]) -> Pairs:
    missing = sorted(set(patch.encoders) - set(prefixes))
    if missing:
        raise FmnPatchError(
            f"the kohya form of {patch.info.architecture} has no names for {', '.join(missing)}; use the native file"
        )
    return {
        encoder_stem(prefixes[c], m): f
        for c, factors in sorted(patch.encoders.items())
        for m, f in factors.items()
    }


def is_kohya(keys: Sequence[str]) -> bool:
    """Whether a file's tensors are in the kohya layout (``lora_unet_...lora_down.weight``, ...)."""
    return bool(keys) and all(_KEY.match(k) for k in keys)


def from_kohya(
    tensors: Mapping[str, torch.Tensor], header: Mapping[str, str], source: str
) -> tuple[str, Factors, dict[str, Factors]]:
    """The component, factors and text-encoder factors (by component) of a kohya-form file: A = lora_down,
    B = lora_up * alpha / rank (alpha folded in, as in every file this package writes). Refused unless a registered
    family reads every stem that is not a text encoder's back into its text-side key/value projections."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        assert m is not None  # is_kohya
        parts.setdefault(m["stem"], {})[m["part"]] = tensor
    pairs: Pairs = {}
    for stem, part in sorted(parts.items()):
        if "lora_down.weight" not in part or "lora_up.weight" not in part:
            raise PatchFileError(
                f"{source}: {stem} has no lora_down or lora_up weight; the file is incomplete"
            )
        a, b = part["lora_down.weight"], part["lora_up.weight"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] < 1:
            raise PatchFileError(
                f"{source}: {stem} has lora_down {tuple(a.shape)} and lora_up {tuple(b.shape)}; a text-side "
                "key/value LoRA is two matrices"
            )
        alpha = part.get("alpha")
        if alpha is not None and (alpha.numel() != 1 or not alpha.is_floating_point()):
            raise PatchFileError(f"{source}: {stem}.alpha must be one number, got shape {tuple(alpha.shape)}")
        scale = float(alpha) / a.shape[0] if alpha is not None else 1.0  # kohya: no alpha means alpha = rank
        if not 0 < abs(scale) < float("inf"):
            raise PatchFileError(
                f"{source}: {stem}.alpha gives the scale {scale}; it must be a finite non-zero number"
            )
        pairs[stem] = (a, (b.float() * scale).to(b.dtype) if scale != 1.0 else b)
    encoders: dict[str, Factors] = {}
    for stem in list(pairs):
        named = next((where for read in _ENCODER_STEMS if (where := read(stem)) is not None), None)
        if named is not None:
            encoders.setdefault(named[0], {})[named[1]] = pairs.pop(stem)
    if not pairs:
        raise PatchFileError(
            f"{source}: a kohya LoRA of text encoders only; a patch carries key/value factors"
        )
    try:
        found = next((got for reader in _READERS if (got := reader(pairs, header)) is not None), None)
    except PatchFileError as e:
        raise PatchFileError(f"{source}: {e}") from e
    if found is None:
        raise PatchFileError(
            f"{source}: a kohya LoRA whose keys ({min(pairs)}, ...) are not all cross-attention key/value "
            "projections of a known model family; fmn-patch reads kohya files it can map back to text-side K/V only"
        )
    return found[0], found[1], encoders


def _short(regex: str, projections: tuple[str, ...]) -> list[str]:
    """``attn2.to_k,attn2.to_v`` from a target regex like ``.*\\.attn2\\.(to_k|to_v)``."""
    stem = regex.removeprefix(r".*\.").split(r"\.(")[0].replace("\\.", ".")
    return [f"{stem}.{p}" for p in projections]
