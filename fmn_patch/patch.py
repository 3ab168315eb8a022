"""The patch file: LoRA factors for ``attn2.to_k`` / ``attn2.to_v`` plus a self-describing header.

A patch is an ordinary diffusers/PEFT LoRA ``.safetensors`` file, so stock ``pipe.load_lora_weights(path)`` loads it
without this package:

- tensors ``unet.<module>.lora_A.weight`` (r, in) and ``unet.<module>.lora_B.weight`` (out, r), where ``<module>``
  ends in ``attn2.to_k`` or ``attn2.to_v``; alpha is folded into ``lora_B`` and ``lora_alpha == r``, so every loader
  computes the same delta ``B @ A``;
- header ``lora_adapter_metadata``: the portable LoraConfig keys (diffusers' ``unet.``-prefixed form);
- header ``modelspec.*``: Stability's ModelSpec 1.0 keys (title, architecture, date, tensor hash, merged_from);
- header ``fmn_patch.*``: this project's namespace (format version, method, concepts, base, config, parents, ...).

Header values are strings (lists and dicts are JSON). Loading validates everything and never unpickles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, Literal, get_args

import safetensors
import safetensors.torch
import torch

from .errors import FmnPatchError, PatchFileError
from .solver import factorize
from .targets import PROJECTIONS, TARGET_REGEX, is_target

FORMAT_VERSION: Final = 1
NAMESPACE: Final = "fmn_patch"
PREFIX: Final = "unet"
Category = Literal["identity", "object", "style", "nsfw", "other"]
CATEGORIES: Final[tuple[str, ...]] = get_args(Category)
CATEGORY_SHORTHANDS: Final = {"id": "identity", "obj": "object"}

_KEY = re.compile(r"^unet\.(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")
_PICKLE_MAGICS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class PatchConcept:
    """A concept the patch makes the model forget."""

    name: str
    category: Category = "other"

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise FmnPatchError(
                "a concept name is empty; give the words the model knows it by, e.g. 'Elon Musk'"
            )
        if self.category not in CATEGORIES:
            raise FmnPatchError(f"unknown category {self.category!r}; use one of {', '.join(CATEGORIES)}")


@dataclass
class PatchInfo:
    """Typed metadata of a patch. Everything here is written to (and read back from) the file header."""

    method: str = "manual"  # how the factors were made: manual, resteer, edit, merge, fmn-baseline, ...
    concepts: tuple[PatchConcept, ...] = ()  # what the patch forgets
    base_model: str | None = None  # Hub id or path of the base it was made for
    base_revision: str | None = None  # Hub commit of that base, when known
    base_hash: str | None = None  # targets.target_hash of that base's UNet
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


@dataclass
class Patch:
    """LoRA factors per target module plus typed metadata. ``delta(module) = B @ A`` (alpha folded into B)."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A (r, in), B (out, r))
    info: PatchInfo = field(default_factory=PatchInfo)

    def __post_init__(self) -> None:
        _check_factors(self.factors)

    # ----------------------------------------------------------------------------------------------- views
    @property
    def modules(self) -> list[str]:
        return sorted(self.factors)

    @property
    def rank(self) -> int:
        """The largest rank over modules (patches made here have one rank everywhere)."""
        return max(a.shape[0] for a, _ in self.factors.values())

    @property
    def ranks(self) -> dict[str, int]:
        return {m: a.shape[0] for m, (a, _) in sorted(self.factors.items())}

    @property
    def concept_names(self) -> list[str]:
        return [c.name for c in self.info.concepts]

    def delta(self, module: str) -> torch.Tensor:
        """The dense weight delta of one module, (out, in), in float32."""
        a, b = self.factors[module]
        return b.float() @ a.float()

    def norms(self) -> dict[str, float]:
        """Frobenius norm of each module's delta."""
        return {m: float(self.delta(m).norm()) for m in self.modules}

    def num_parameters(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.factors.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors in the PEFT/diffusers key form, ready for ``pipe.load_lora_weights(state_dict)``."""
        out: dict[str, torch.Tensor] = {}
        for module in self.modules:
            a, b = self.factors[module]
            out[f"{PREFIX}.{module}.lora_A.weight"] = a.contiguous()
            out[f"{PREFIX}.{module}.lora_B.weight"] = b.contiguous()
        return out

    def tensor_hash(self) -> str:
        return tensor_hash(self.state_dict())

    def with_info(self, **changes: Any) -> Patch:
        return Patch(self.factors, dataclasses.replace(self.info, **changes))

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_deltas(
        cls, deltas: Mapping[str, torch.Tensor], rank: int, info: PatchInfo | None = None
    ) -> tuple[Patch, dict[str, float]]:
        """Factor dense deltas (out, in) into rank-``rank`` LoRA factors by truncated SVD.

        Returns the patch and the relative Frobenius residual ``||D - B A|| / ||D||`` of each module (0 when exact).
        """
        if rank < 1:
            raise FmnPatchError(f"rank must be at least 1, got {rank}")
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        residuals: dict[str, float] = {}
        for module, d in sorted(deltas.items()):
            a, b, residual = low_rank(d.float(), rank)
            factors[module] = (a, b)
            residuals[module] = residual
        return cls(factors, info or PatchInfo()), residuals

    # ------------------------------------------------------------------------------------------ the file
    def header(self) -> dict[str, str]:
        """The file header: diffusers' adapter metadata, ModelSpec keys and the ``fmn_patch.*`` namespace."""
        info = self.info
        date = info.date or datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        ranks = self.ranks
        uniform = len(set(ranks.values())) == 1
        lora_config = {
            "r": self.rank,
            "lora_alpha": self.rank,
            "target_modules": TARGET_REGEX,
            "rank_pattern": {} if uniform else ranks,
            "alpha_pattern": {} if uniform else ranks,
            "use_dora": False,
            "lora_bias": False,
        }
        concepts = [dataclasses.asdict(c) for c in info.concepts]
        title = info.title or default_title(info)
        header = {
            "format": "pt",
            "lora_adapter_metadata": json.dumps({f"{PREFIX}.{k}": v for k, v in lora_config.items()}),
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": f"{info.architecture}/lora",
            "modelspec.implementation": "diffusers",
            "modelspec.title": title,
            "modelspec.description": info.description or default_description(info),
            "modelspec.date": date,
            "modelspec.hash_sha256": "0x" + self.tensor_hash(),
            "modelspec.merged_from": ", ".join(str(p.get("title", "")) for p in info.parents),
            f"{NAMESPACE}.format_version": str(info.format_version),
            f"{NAMESPACE}.method": info.method,
            f"{NAMESPACE}.concepts": json.dumps(concepts),
            f"{NAMESPACE}.base_model": info.base_model or "",
            f"{NAMESPACE}.base_revision": info.base_revision or "",
            f"{NAMESPACE}.base_hash": info.base_hash or "",
            f"{NAMESPACE}.rank": str(self.rank),
            f"{NAMESPACE}.ranks": json.dumps({} if uniform else ranks),
            f"{NAMESPACE}.target_modules": json.dumps(list(PROJECTIONS)),
            f"{NAMESPACE}.config": json.dumps(info.config, sort_keys=True),
            f"{NAMESPACE}.parents": json.dumps(list(info.parents)),
            f"{NAMESPACE}.results": json.dumps(info.results, sort_keys=True),
            f"{NAMESPACE}.extra": json.dumps(info.extra, sort_keys=True),
            f"{NAMESPACE}.versions": json.dumps(info.versions or library_versions(), sort_keys=True),
        }
        if info.author:
            header["modelspec.author"] = info.author
        if info.license:
            header["modelspec.license"] = info.license
        return header

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the patch atomically (temp file + rename). Refuses to replace a file unless ``overwrite``."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise FmnPatchError(f"patch path {str(path)!r} must end in .safetensors")
        return atomic_write(
            path,
            lambda tmp: safetensors.torch.save_file(self.state_dict(), str(tmp), metadata=self.header()),
            overwrite=overwrite,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Patch:
        """Read and validate a patch file. Raises ``PatchFileError`` with the reason and the fix."""
        path = Path(path)
        header = read_header(path)
        version = header.get(f"{NAMESPACE}.format_version")
        if version is None:
            raise PatchFileError(
                f"{path}: not an fmn-patch file (its header has no {NAMESPACE}.format_version); "
                "only patches made by fmn-patch can be loaded"
            )
        if not version.isdigit() or int(version) > FORMAT_VERSION:
            raise PatchFileError(
                f"{path}: patch format version {version!r} is unknown to this fmn-patch (reads up to "
                f"{FORMAT_VERSION}); upgrade with `pip install -U fmn-patch`"
            )
        try:
            tensors = safetensors.torch.load_file(str(path), device="cpu")
        except (safetensors.SafetensorError, OSError, RuntimeError) as e:
            raise PatchFileError(
                f"{path}: truncated or corrupt safetensors file ({e}); download it again"
            ) from e
        factors = factors_from_state_dict(tensors, source=str(path))
        try:
            patch = cls(factors, info_from_header(header))
        except FmnPatchError as e:
            raise PatchFileError(f"{path}: {e}") from e
        expected = header.get("modelspec.hash_sha256", "").removeprefix("0x")
        if expected and expected != patch.tensor_hash():
            raise PatchFileError(
                f"{path}: tensor hash mismatch (header {expected[:12]}..., tensors {patch.tensor_hash()[:12]}...): "
                "the file was modified or damaged after it was written; get a fresh copy"
            )
        return patch


# ------------------------------------------------------------------------------------------------ helpers
def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Exact truncated SVD of a delta (out, in) into A (r, in), B (out, r), and the relative Frobenius residual.

    Computed in float64 (merges check exactness at full rank); the factors come back in float32.
    """
    a, b, residual, total = factorize(delta.double(), rank, exact=True)
    relative = (residual / total) ** 0.5 if total > 0 else 0.0
    return a.float().contiguous(), b.float().contiguous(), relative


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


def factors_from_state_dict(
    tensors: Mapping[str, torch.Tensor], source: str = "state dict"
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Group ``unet.<module>.lora_{A,B}.weight`` tensors by module, refusing anything else."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None or not is_target(m["module"]):
            raise PatchFileError(
                f"{source}: key {key!r} is not an attn2 to_k/to_v LoRA factor "
                "(expected unet.<module>.attn2.to_k|to_v.lora_A|lora_B.weight); "
                "fmn-patch files hold cross-attention key/value LoRA factors only"
            )
        pairs.setdefault(m["module"], {})[m["factor"]] = t
    if not pairs:
        raise PatchFileError(f"{source}: holds no LoRA tensors; it is not a patch")
    factors = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            missing = "lora_B" if "A" in ab else "lora_A"
            raise PatchFileError(f"{source}: module {module} has no {missing} factor; the file is incomplete")
        factors[module] = (ab["A"], ab["B"])
    return factors


def _check_factors(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    if not factors:
        raise FmnPatchError("a patch needs at least one module's LoRA factors")
    for module, (a, b) in factors.items():
        if not is_target(module):
            raise FmnPatchError(f"module {module!r} is not an attn2.to_k/to_v projection")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[0] < 1:
            raise FmnPatchError(
                f"inconsistent shapes for {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                "(need A (r, in) and B (out, r) with the same r >= 1)"
            )
        if not (a.is_floating_point() and b.is_floating_point()):
            raise FmnPatchError(f"{module}: LoRA factors must be floating point, got {a.dtype} / {b.dtype}")


def read_header(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, after checking that it is one (never unpickles)."""
    if not path.is_file():
        raise PatchFileError(f"{path}: no such file; check the path (patches are .safetensors files)")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if any(head.startswith(magic) for magic in _PICKLE_MAGICS):
            raise PatchFileError(
                f"{path}: a pickled PyTorch checkpoint, refused (unpickling can run arbitrary code); "
                "fmn-patch reads .safetensors only: convert it with a tool you trust"
            )
        if len(head) < 8:
            raise PatchFileError(f"{path}: not a safetensors file ({size} bytes, too short to hold a header)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or n + 8 > size:
            raise PatchFileError(
                f"{path}: not a safetensors file, or truncated (header length {n} vs file size {size}); "
                "download it again"
            )
        raw = f.read(n)
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PatchFileError(f"{path}: not a safetensors file (header is not JSON: {e})") from e
    if not isinstance(parsed, dict):
        raise PatchFileError(f"{path}: not a safetensors file (header is not a JSON object)")
    end = max((int(v["data_offsets"][1]) for k, v in parsed.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise PatchFileError(
            f"{path}: truncated or corrupt (tensors need {8 + n + end} bytes, file has {size}); download it again"
        )
    meta = parsed.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def info_from_header(header: Mapping[str, str]) -> PatchInfo:
    """Typed metadata back from a header written by ``Patch.header``."""

    def get(key: str) -> str:
        return header.get(f"{NAMESPACE}.{key}", "")

    def load_json(key: str, default: Any) -> Any:
        raw = get(key)
        if not raw:
            return default
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise PatchFileError(f"header field {NAMESPACE}.{key} is not valid JSON: {e}") from e

    architecture = header.get("modelspec.architecture", "stable-diffusion-v1/lora").removesuffix("/lora")
    return PatchInfo(
        method=get("method") or "manual",
        concepts=tuple(
            PatchConcept(c["name"], c.get("category", "other")) for c in load_json("concepts", [])
        ),
        base_model=get("base_model") or None,
        base_revision=get("base_revision") or None,
        base_hash=get("base_hash") or None,
        architecture=architecture,
        title=header.get("modelspec.title", ""),
        description=header.get("modelspec.description", ""),
        author=header.get("modelspec.author", ""),
        license=header.get("modelspec.license", ""),
        date=header.get("modelspec.date", ""),
        config=load_json("config", {}),
        parents=tuple(load_json("parents", [])),
        results=load_json("results", {}),
        extra=load_json("extra", {}),
        versions=load_json("versions", {}),
        format_version=int(get("format_version") or FORMAT_VERSION),
    )


def default_title(info: PatchInfo) -> str:
    names = ", ".join(c.name for c in info.concepts)
    return f"forget {names}" if names else f"fmn-patch ({info.method})"


def default_description(info: PatchInfo) -> str:
    names = ", ".join(f"{c.name} ({c.category})" for c in info.concepts) or "no named concept"
    base = info.base_model or "an unnamed base"
    return f"fmn-patch LoRA on UNet attn2.to_k/to_v, method {info.method}, forgets {names}; made for {base}."


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("fmn-patch", "torch", "diffusers", "peft", "safetensors", "huggingface_hub"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def atomic_write(path: Path, write: Any, *, overwrite: bool) -> Path:
    """Run ``write(tmp_path)`` on a temp file beside ``path``, then rename it into place.

    An exception or Ctrl-C leaves no partial file; an existing ``path`` is kept unless ``overwrite``.
    """
    if path.exists() and not overwrite:
        raise FmnPatchError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    if path.exists() and path.is_dir():
        raise FmnPatchError(
            f"{path} is a directory; give a file path ending in {path.suffix or '.safetensors'}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
