"""The patch file's header and its hashes: reading a safetensors file safely, and the typed metadata.

Header values are strings (lists and dicts are JSON). Three namespaces: diffusers' adapter metadata
(``LORA_ADAPTER_METADATA_KEY``), Stability's ModelSpec keys (``modelspec.*``) and this project's ``fmn_patch.*``.

Two hashes, both checked on load:

- ``modelspec.hash_sha256``: the ModelSpec (and sd-scripts) definition, ``0x`` + SHA-256 of the file's tensor data,
  everything after the header (``modelspec_hash``, ``file_data_hash``), so spec-following tools can check it;
- ``fmn_patch.tensor_hash``: this project's SHA-256 over the tensors sorted by key (key, dtype, shape, bytes), which
  does not depend on how a writer lays the tensors out (``tensor_hash``).

Format version 1 (fmn-patch 0.1) wrote the project's hash under ``modelspec.hash_sha256``; such files still load,
checked against that hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import safetensors
import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY  # the header key of an adapter's LoraConfig

from ..errors import FmnPatchError, PatchFileError
from .category import Category, category_of
from .targets import target_kinds

FORMAT_VERSION: Final = 2  # 2: modelspec.hash_sha256 is the ModelSpec hash, ours is fmn_patch.tensor_hash
NAMESPACE: Final = "fmn_patch"

_PICKLE_MAGICS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


@dataclass(frozen=True)
class PatchConcept:
    """A concept the patch makes the model forget."""

    name: str
    category: Category = "other"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise FmnPatchError(
                f"a concept name must be non-empty text, got {self.name!r}; give the words the model knows it "
                "by, e.g. 'Elon Musk'"
            )
        object.__setattr__(self, "category", category_of(self.category))


@dataclass
class PatchInfo:
    """Typed metadata of a patch. Everything here is written to (and read back from) the file header."""

    method: str = "manual"  # how the factors were made: manual, resteer, edit, merge, fmn-baseline, ...
    concepts: tuple[PatchConcept, ...] = ()  # what the patch forgets
    base_model: str | None = None  # Hub id or path of the base it was made for
    base_revision: str | None = None  # Hub commit of that base, when known
    base_hash: str | None = None  # the family's hash of that base's target weights
    encoder_hash: str | None = (
        None  # the family's hash of that base's text-encoder layers (with encoder factors)
    )
    architecture: str = "stable-diffusion-v1"  # ModelSpec architecture of the base (without "/lora")
    title: str = ""
    description: str = ""
    author: str = ""
    license: str = ""
    date: str = ""  # ISO 8601, set on save when empty
    config: dict[str, Any] = field(default_factory=dict)  # the training / edit config that made it
    parents: tuple[dict[str, Any], ...] = ()  # for merges: title, hash, weight, concepts of each parent
    results: dict[str, Any] = field(default_factory=dict)  # evaluation results carried with the patch
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific facts (e.g. SVD residuals)
    versions: dict[str, str] = field(default_factory=dict)  # library versions that made it
    format_version: int = FORMAT_VERSION


def modelspec_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """``0x`` + SHA-256 of the tensor data of the safetensors file these tensors make, excluding the header (the
    ModelSpec ``hash_sha256``); the data part does not depend on the metadata, so it is known before the header."""
    import safetensors.torch

    data = safetensors.torch.save({k: t.detach().cpu().contiguous() for k, t in tensors.items()})
    (n,) = struct.unpack("<Q", data[:8])  # the header's length, the first 8 bytes of every safetensors file
    return "0x" + hashlib.sha256(memoryview(data)[8 + n :]).hexdigest()


def file_data_hash(path: str | os.PathLike[str]) -> str:
    """``0x`` + SHA-256 of a safetensors file's bytes after its header: the ModelSpec hash as a checker computes it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "0x" + digest.hexdigest()


def tensor_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors, sorted by key: key, dtype, shape and raw bytes of each."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        # reshape(-1): a (n, 1) factor can be "contiguous" with a last stride != 1, which view(uint8) refuses
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def read_file(
    path: str | os.PathLike[str], *, tensors: bool = True
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The ``__metadata__`` and the tensors of a safetensors file, read by safetensors itself (never unpickles).

    safetensors checks the header's structure (JSON shape, dtypes, shapes, offsets that cover the data exactly);
    anything it refuses, or that cannot be read, is a ``PatchFileError``. ``tensors=False`` reads the header only.
    """
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise PatchFileError(f"{path}: {what}; check the path (patches are .safetensors files)")
    try:
        with path.open("rb") as f:
            head = f.read(8)
        if any(head.startswith(magic) for magic in _PICKLE_MAGICS):
            raise PatchFileError(
                f"{path}: a pickled PyTorch checkpoint, refused (unpickling can run arbitrary code); "
                "fmn-patch reads .safetensors only: convert it with a tool you trust"
            )
        if len(head) < 8:
            raise PatchFileError(
                f"{path}: not a safetensors file ({len(head)} bytes, too short to hold a header)"
            )
        with safetensors.safe_open(str(path), "pt", device="cpu") as f:
            meta = f.metadata() or {}
            loaded = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (a safe_open handle) if tensors else {}
    except safetensors.SafetensorError as e:
        raise PatchFileError(
            f"{path}: not a safetensors file, or truncated or corrupt ({str(e).splitlines()[0][:200]}); "
            "download it again"
        ) from e
    except OSError as e:
        raise PatchFileError(f"{path}: cannot be read: {(e.strerror or str(e)).lower()}") from e
    return dict(meta), loaded


def read_header(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (checked by safetensors; tensors are not read)."""
    return read_file(path, tensors=False)[0]


def write_header(
    info: PatchInfo,
    *,
    component: str,
    projections: tuple[str, ...],
    target_description: str,
    ranks: dict[str, int],
    tensor_digest: str,
    spec_hash: str,
    encoder_ranks: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, str]:
    """The file header of a patch: diffusers' adapter metadata, ModelSpec keys and the ``fmn_patch.*`` namespace.

    ``tensor_digest`` is ``tensor_hash`` of the tensors, ``spec_hash`` their ``modelspec_hash``; the header always
    carries the current format version, whatever version the patch was read from. ``encoder_ranks`` (by text
    encoder component, by module) are the ranks of text-encoder factors the patch carries beside its own."""
    from datetime import datetime, timezone

    date = info.date or datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    rank = max(ranks.values())
    uniform = len(set(ranks.values())) == 1
    concepts = [dataclasses.asdict(c) for c in info.concepts]
    header = {
        "format": "pt",
        LORA_ADAPTER_METADATA_KEY: json.dumps(adapter_metadata(component, ranks, encoder_ranks)),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{info.architecture}/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": info.title or default_title(info),
        "modelspec.description": info.description or default_description(info, target_description),
        "modelspec.date": date,
        "modelspec.hash_sha256": spec_hash,
        "modelspec.merged_from": ", ".join(str(p.get("title", "")) for p in info.parents),
        f"{NAMESPACE}.format_version": str(FORMAT_VERSION),
        f"{NAMESPACE}.tensor_hash": tensor_digest,
        f"{NAMESPACE}.method": info.method,
        f"{NAMESPACE}.concepts": json.dumps(concepts),
        f"{NAMESPACE}.base_model": info.base_model or "",
        f"{NAMESPACE}.base_revision": info.base_revision or "",
        f"{NAMESPACE}.base_hash": info.base_hash or "",
        f"{NAMESPACE}.rank": str(rank),
        f"{NAMESPACE}.ranks": json.dumps({} if uniform else ranks),
        f"{NAMESPACE}.target_modules": json.dumps(list(projections)),
        f"{NAMESPACE}.config": json.dumps(info.config, sort_keys=True),
        f"{NAMESPACE}.parents": json.dumps(list(info.parents)),
        f"{NAMESPACE}.results": json.dumps(info.results, sort_keys=True),
        f"{NAMESPACE}.extra": json.dumps(info.extra, sort_keys=True),
        f"{NAMESPACE}.versions": json.dumps(info.versions or library_versions(), sort_keys=True),
    }
    if encoder_ranks:  # which text encoders the patch changes, and how many layers of each at what rank
        header[f"{NAMESPACE}.encoders"] = json.dumps(
            {c: {"modules": len(r), "rank": max(r.values())} for c, r in sorted(encoder_ranks.items())}
        )
    if info.encoder_hash:  # only files with text-encoder factors record their encoders' hash
        header[f"{NAMESPACE}.encoder_hash"] = info.encoder_hash
    if info.author:
        header["modelspec.author"] = info.author
    if info.license:
        header["modelspec.license"] = info.license
    return header


def adapter_metadata(
    component: str, ranks: Mapping[str, int], encoder_ranks: Mapping[str, Mapping[str, int]] | None = None
) -> dict[str, Any]:
    """diffusers' adapter metadata for a patch: the portable LoraConfig keys, on exactly the patched modules
    (alpha is folded into lora_B, so lora_alpha == r), keyed ``<component>.<key>`` as diffusers writes them; one
    config per component, text encoders' (``encoder_ranks``) included."""
    metadata = _component_config(component, ranks)
    for encoder, encoder_rank in sorted((encoder_ranks or {}).items()):
        metadata |= _component_config(encoder, encoder_rank)
    return metadata


def _component_config(component: str, ranks: Mapping[str, int]) -> dict[str, Any]:
    heads = {k.config_prefix for k in target_kinds(component)} - {""}
    for head in heads:  # peft matches a name by its tail: without the head it matches with or without it
        ranks = {m.removeprefix(head): r for m, r in ranks.items()}
    rank = max(ranks.values())
    uniform = len(set(ranks.values())) == 1
    config = {
        "r": rank,
        "lora_alpha": rank,
        "target_modules": sorted(ranks),
        "rank_pattern": {} if uniform else dict(ranks),
        "alpha_pattern": {} if uniform else dict(ranks),
        "use_dora": False,
        "lora_bias": False,
    }
    return {f"{component}.{k}": v for k, v in config.items()}


def default_title(info: PatchInfo) -> str:
    names = ", ".join(c.name for c in info.concepts)
    return f"forget {names}" if names else f"fmn-patch ({info.method})"


def default_description(info: PatchInfo, targets: str = "UNet attn2.to_k/to_v") -> str:
    names = ", ".join(f"{c.name} ({c.category})" for c in info.concepts) or "no named concept"
    base = info.base_model or "an unnamed base"
    return f"fmn-patch LoRA on {targets}, method {info.method}, forgets {names}; made for {base}."


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("fmn-patch", "torch", "diffusers", "peft", "safetensors", "huggingface_hub"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
