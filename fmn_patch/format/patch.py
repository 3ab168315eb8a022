"""The patch file: LoRA factors for a family's text-side key/value projections plus a self-describing header.

A patch is an ordinary diffusers/PEFT LoRA ``.safetensors`` file, so stock ``pipe.load_lora_weights(path)`` loads it
without this package:

- tensors ``<component>.<module>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r), where ``<component>``
  is the pipeline component (``unet`` for SD 1.x/2.x/XL) and ``<module>`` one of its registered targets
  (``fmn_patch.format.targets``); alpha is folded into ``lora_B`` and ``lora_alpha == r``, so every loader
  computes the same delta ``B @ A``;
- optionally, factors on CLIP text encoders' layers beside them, ``text_encoder.<module>.lora_A.weight`` (and
  ``text_encoder_2``), which stock diffusers loads onto the pipeline's text encoders (``Patch.encoders``);
- the header of ``fmn_patch.format.header``.

Loading validates everything and never unpickles.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import safetensors
import safetensors.torch
import torch

from ..errors import FmnPatchError, PatchFileError
from ..files import atomic_write, check_output
from .header import (
    FORMAT_VERSION,
    NAMESPACE,
    PatchInfo,
    adapter_metadata,
    file_data_hash,
    modelspec_hash,
    read_file,
    tensor_hash,
    write_header,
)
from .kohya import from_kohya, is_kohya
from .lowrank import low_rank, low_rank_within
from .schema import format_version, info_from_header
from .targets import DEFAULT_COMPONENT, describe_targets, is_encoder, kind_for, kind_of

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A (r, in), B (out, r))
_KEY = re.compile(
    r"^(?P<component>[A-Za-z_][A-Za-z0-9_]*)\.(?P<module>[A-Za-z0-9_.]+)\.lora_(?P<factor>[AB])\.weight$"
)
#: The dtypes a patch's factors may have: what diffusers, peft and the UIs compute with.
DTYPES: Final = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class Patch:
    """LoRA factors per target module plus typed metadata. ``delta(module) = B @ A`` (alpha folded into B)."""

    factors: Factors
    info: PatchInfo = field(default_factory=PatchInfo)
    component: str = DEFAULT_COMPONENT  # the pipeline component the modules belong to
    # factors on text encoders' layers, by pipeline component ("text_encoder", "text_encoder_2"); empty by default
    encoders: dict[str, Factors] = field(default_factory=dict)
    # True when loaded from a file whose header hash was checked against its tensors (False: made in memory, or
    # read from a file whose header carries no hash)
    verified: bool = field(default=False, compare=False, repr=False)
    form: str = field(
        default="native", compare=False, repr=False
    )  # the file's layout: native (PEFT) or kohya

    def __post_init__(self) -> None:
        check_factors(self.factors, self.component)
        for component, factors in self.encoders.items():
            if not is_encoder(component):
                raise FmnPatchError(
                    f"{component!r} is not a text encoder a patch may change (text encoders: "
                    f"{describe_targets()})"
                )
            check_factors(factors, component)

    # ----------------------------------------------------------------------------------------------- views
    @property
    def modules(self) -> list[str]:
        return sorted(self.factors)

    @property
    def encoder_modules(self) -> list[str]:
        """The text-encoder modules, ``<component>.<module>`` (none in a default patch)."""
        return [f"{c}.{m}" for c, factors in sorted(self.encoders.items()) for m in sorted(factors)]

    def parts(self) -> dict[str, Factors]:
        """Every component's factors: the denoiser's first, then each text encoder's."""
        return {self.component: self.factors, **dict(sorted(self.encoders.items()))}

    @property
    def rank(self) -> int:
        """The largest rank over modules (one rank everywhere, except at ``rank="auto"``: see ``ranks``)."""
        return max(a.shape[0] for factors in self.parts().values() for a, _ in factors.values())

    @property
    def ranks(self) -> dict[str, int]:
        return {m: a.shape[0] for m, (a, _) in sorted(self.factors.items())}

    def rank_summary(self) -> dict[str, float]:
        """The smallest, median and largest rank over modules."""
        ranks = sorted(self.ranks.values())
        mid = len(ranks) // 2
        median = ranks[mid] if len(ranks) % 2 else (ranks[mid - 1] + ranks[mid]) / 2
        return {"min": ranks[0], "median": median, "max": ranks[-1]}

    @property
    def concept_names(self) -> list[str]:
        return [c.name for c in self.info.concepts]

    def delta(self, module: str) -> torch.Tensor:
        """The dense weight delta of one module, (out, in), in float32."""
        a, b = self.factors[module]
        return b.float() @ a.float()

    def norms(self) -> dict[str, float]:
        """Frobenius norm of each module's delta (text-encoder modules as ``<component>.<module>``)."""
        norms = {m: float(self.delta(m).norm()) for m in self.modules}
        for component, factors in sorted(self.encoders.items()):
            norms |= {
                f"{component}.{m}": float((b.float() @ a.float()).norm())
                for m, (a, b) in sorted(factors.items())
            }
        return norms

    def num_parameters(self) -> int:
        return sum(a.numel() + b.numel() for factors in self.parts().values() for a, b in factors.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors in the PEFT/diffusers key form, ready for ``pipe.load_lora_weights(state_dict)``."""
        out: dict[str, torch.Tensor] = {}
        for component, factors in self.parts().items():
            for module in sorted(factors):
                a, b = factors[module]
                out[f"{component}.{module}.lora_A.weight"] = a.contiguous()
                out[f"{component}.{module}.lora_B.weight"] = b.contiguous()
        return out

    def tensor_hash(self) -> str:
        return tensor_hash(self.state_dict())

    def with_info(self, **changes: Any) -> Patch:
        return Patch(
            self.factors,
            dataclasses.replace(self.info, **changes),
            self.component,
            self.encoders,
            verified=self.verified,
        )

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_deltas(
        cls,
        deltas: Mapping[str, torch.Tensor],
        rank: int,
        info: PatchInfo | None = None,
        component: str = DEFAULT_COMPONENT,
        encoders: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    ) -> tuple[Patch, dict[str, float]]:
        """Factor dense deltas (out, in) into rank-``rank`` LoRA factors by truncated SVD; ``encoders`` are text
        encoders' deltas by component, factored the same way.

        The rank is capped at min(out, in) of the narrowest module, where that module's factorisation is already
        exact (one rank for every module). Returns the patch and the relative Frobenius residual
        ``||D - B A|| / ||D||`` of each module (0 when exact; text-encoder modules as ``<component>.<module>``).
        """
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise FmnPatchError(f"rank={rank!r} must be a whole number >= 1, e.g. 8")
        every = [*deltas.values(), *(d for ds in (encoders or {}).values() for d in ds.values())]
        rank = min(rank, *(min(d.shape) for d in every)) if every else rank
        return cls._factored(deltas, lambda d: low_rank(d, rank), info, component, encoders)

    @classmethod
    def from_deltas_within(
        cls,
        deltas: Mapping[str, torch.Tensor],
        max_residual: float,
        info: PatchInfo | None = None,
        component: str = DEFAULT_COMPONENT,
        encoders: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    ) -> tuple[Patch, dict[str, float]]:
        """Factor dense deltas (out, in) by truncated SVD, each at the smallest rank whose relative Frobenius
        residual ``||D - B A|| / ||D||`` is at most ``max_residual`` (at least 1). Returns the patch and the
        residual of each module."""
        return cls._factored(deltas, lambda d: low_rank_within(d, max_residual), info, component, encoders)

    @classmethod
    def _factored(
        cls,
        deltas: Mapping[str, torch.Tensor],
        factor: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, float]],
        info: PatchInfo | None,
        component: str,
        encoders: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    ) -> tuple[Patch, dict[str, float]]:
        """Each module's delta (out, in, float32) through `factor` -> (A, B, relative residual)."""
        parts: dict[str, Factors] = {}
        residuals: dict[str, float] = {}
        for part, ds in [(component, deltas), *sorted((encoders or {}).items())]:
            parts[part] = {}
            for module, d in sorted(ds.items()):
                a, b, residual = factor(d.float())
                parts[part][module] = (a, b)
                residuals[module if part == component else f"{part}.{module}"] = residual
        factors = parts.pop(component)
        return cls(factors, info or PatchInfo(), component, parts), residuals

    # ------------------------------------------------------------------------------------------ the file
    def header(self) -> dict[str, str]:
        """The file header (see ``fmn_patch.format.header``), with both hashes of these tensors."""
        kind = kind_for(self.component, self.modules)
        tensors = self.state_dict()
        return write_header(
            self.info,
            component=self.component,
            projections=kind.projections,
            target_description=kind.description,
            ranks=self.ranks,
            encoder_ranks=self.encoder_ranks(),
            tensor_digest=tensor_hash(tensors),
            spec_hash=modelspec_hash(tensors),
        )

    def encoder_ranks(self) -> dict[str, dict[str, int]]:
        """The rank of each text-encoder module, by component."""
        return {
            c: {m: a.shape[0] for m, (a, _) in sorted(f.items())} for c, f in sorted(self.encoders.items())
        }

    def adapter_metadata(self) -> dict[str, Any]:
        """diffusers' adapter metadata (the LoraConfig of each component) of this patch, as written in its
        header."""
        return adapter_metadata(self.component, self.ranks, self.encoder_ranks())

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the patch atomically (temp file + no-replace publish). Refuses to replace a file unless
        ``overwrite``."""
        path = check_output(path, overwrite=overwrite, suffixes=(".safetensors",), what="patch path")
        tensors, header = self.state_dict(), self.header()
        return atomic_write(
            path,
            lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=header),
            overwrite=overwrite,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, require_hash: bool = False) -> Patch:
        """Read and validate a patch file: it loads whole or raises ``PatchFileError`` with the reason and the fix.

        The native (diffusers/PEFT) form and this package's kohya export (``fmnpatch export``) both load, to the same
        factors. The header's hashes are checked when present (``verified`` says so); ``require_hash`` refuses a
        file without one."""
        path = Path(path)
        header, tensors = read_file(path)
        try:
            version = format_version(header)
            if version is None:
                raise PatchFileError(
                    f"not an fmn-patch file (its header has no {NAMESPACE}.format_version); "
                    "only patches made by fmn-patch can be loaded"
                )
            if version > FORMAT_VERSION or version < 1:
                raise PatchFileError(
                    f"patch format version '{version}' is unknown to this fmn-patch (reads up to {FORMAT_VERSION}); "
                    "upgrade with `pip install -U fmn-patch`"
                )
            info = info_from_header(header)
        except FmnPatchError as e:
            raise PatchFileError(f"{path}: {e}") from e
        if is_kohya(list(tensors)):  # our kohya export (for the UIs): read back into the same factors
            component, factors, encoders = from_kohya(tensors, header, str(path))
            digest = tensor_hash(tensors)  # its hashes are of the kohya tensors
        else:
            component, factors, encoders = factors_from_state_dict(tensors, source=str(path))
            digest = ""
        try:
            patch = cls(factors, info, component, encoders)
        except FmnPatchError as e:
            raise PatchFileError(f"{path}: {e}") from e
        patch.verified = check_hashes(
            path, header, version, digest or patch.tensor_hash(), require=require_hash
        )
        patch.form = "kohya" if digest else "native"
        return patch


# ------------------------------------------------------------------------------------------------ helpers
def check_hashes(path: Path, header: Mapping[str, str], version: int, digest: str, *, require: bool) -> bool:
    """Check every hash the header carries: ``fmn_patch.tensor_hash`` against ``digest`` (``tensor_hash`` of the
    file's tensors) and ``modelspec.hash_sha256`` against the file's data (in format version 1 that key held the
    project's hash). True when at least one was checked; a mismatch, or none with ``require``, is refused."""
    ours = header.get(f"{NAMESPACE}.tensor_hash", "")
    spec = header.get("modelspec.hash_sha256", "")
    if version < 2:  # fmn-patch 0.1: the project's hash under the ModelSpec key
        ours, spec = spec.removeprefix("0x"), ""
    checks = [(ours, digest, f"{NAMESPACE}.tensor_hash")] if ours else []
    if spec:
        checks.append((spec.lower(), file_data_hash(path), "modelspec.hash_sha256"))
    for expected, actual, key in checks:
        if expected != actual:
            raise PatchFileError(
                f"{path}: tensor hash mismatch ({key} in the header is {expected[:14]}..., the tensors give "
                f"{actual[:14]}...): the file was modified or damaged after it was written; get a fresh copy"
            )
    if not checks and require:
        raise PatchFileError(
            f"{path}: the header carries no tensor hash (modelspec.hash_sha256, {NAMESPACE}.tensor_hash), so its "
            "integrity cannot be checked; get the file from its maker again, or drop --strict to use it unverified"
        )
    return bool(checks)


def factors_from_state_dict(
    tensors: Mapping[str, torch.Tensor], source: str = "state dict"
) -> tuple[str, Factors, dict[str, Factors]]:
    """The denoiser's component, its ``<component>.<module>.lora_{A,B}.weight`` tensors grouped by module, and the
    text encoders' factors by component; refuses anything else."""
    pairs: dict[str, dict[str, dict[str, torch.Tensor]]] = {}  # component -> module -> "A"/"B" -> tensor
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None or kind_of(m["component"], m["module"]) is None:
            raise PatchFileError(
                f"{source}: key {key[:120]!r} is not a LoRA factor of a text-side key/value projection "
                f"or a text encoder's layer (expected <component>.<module>.lora_A|lora_B.weight on "
                f"{describe_targets()}); fmn-patch files hold cross-attention key/value LoRA factors"
            )
        pairs.setdefault(m["component"], {}).setdefault(m["module"], {})[m["factor"]] = t
    if not pairs:
        raise PatchFileError(f"{source}: holds no LoRA tensors; it is not a patch")
    denoisers = sorted(c for c in pairs if not is_encoder(c))
    if len(denoisers) != 1:
        raise PatchFileError(
            f"{source}: key/value factors of {len(denoisers)} components {denoisers}; a patch has those of one "
            "(text-encoder factors ride beside them)"
        )
    parts: dict[str, Factors] = {}
    for component, modules in sorted(pairs.items()):
        parts[component] = {}
        for module, ab in sorted(modules.items()):
            if set(ab) != {"A", "B"}:
                missing = "lora_B" if "A" in ab else "lora_A"
                raise PatchFileError(
                    f"{source}: module {component}.{module} has no {missing} factor; the file is incomplete"
                )
            parts[component][module] = (ab["A"], ab["B"])
    component = denoisers[0]
    return component, parts.pop(component), parts


def check_factors(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], component: str) -> None:
    if not factors:
        raise FmnPatchError("a patch needs at least one module's LoRA factors")
    for module, (a, b) in factors.items():
        if kind_of(component, module) is None:
            raise FmnPatchError(
                f"module {module!r} of {component!r} is not a "
                f"{'text-encoder layer' if is_encoder(component) else 'text-side key/value projection'} a patch "
                f"may change ({describe_targets()})"
            )
        if (
            a.ndim != 2
            or b.ndim != 2
            or a.shape[0] != b.shape[1]
            or min(a.shape[0], a.shape[1], b.shape[0]) < 1
        ):
            raise FmnPatchError(
                f"inconsistent shapes for {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                "(need A (r, in) and B (out, r) with the same r >= 1, and in, out >= 1)"
            )
        if a.dtype not in DTYPES or b.dtype not in DTYPES:
            raise FmnPatchError(
                f"{module}: LoRA factors are {a.dtype} / {b.dtype}; they must be float32, float16 or bfloat16"
            )
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            raise FmnPatchError(
                f"{module}: LoRA factors hold NaN or infinite values, which would ruin every image; the patch is "
                "broken, make it again"
            )
