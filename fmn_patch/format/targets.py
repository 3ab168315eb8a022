"""Which modules a patch file may touch: the text-side key/value projections, declared by each model family, and
the text encoders' layers a patch may carry beside them (``encoder`` kinds).

A patch file names its modules ``<component>.<module>``: the pipeline component the LoRA sits on (``unet``,
``transformer``) and the module's path inside it. Each family registers the modules it allows, as a regex that
peft full-matches against module names (the same string goes into the file's ``lora_adapter_metadata``). The file
format checks keys against these declarations and knows nothing else about models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from ..errors import UnknownNameError


@dataclass(frozen=True)
class TargetKind:
    """The modules one family may patch: a peft ``target_modules`` regex on the module names of ``component``."""

    component: str  # pipeline component and patch-key prefix, e.g. "unet"
    regex: str  # peft full-matches it against module names, e.g. r".*\.attn2\.(to_k|to_v)"
    projections: tuple[str, ...]  # the projection names the regex allows, e.g. ("to_k", "to_v")
    description: str  # for people, e.g. "UNet attn2.to_k / attn2.to_v"
    # True for a text encoder's layers (``text_encoder``, ``text_encoder_2``): a patch carries them beside its
    # denoiser's key/value factors, never alone
    encoder: bool = False
    # the head of a module name that peft configs leave out, so that their target names match a model that has
    # it and one that does not (CLIP's "text_model.", which transformers 5 flattens away)
    config_prefix: str = ""
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", re.compile(self.regex))

    def matches(self, module: str) -> bool:
        return self._compiled.fullmatch(module) is not None


_KINDS: list[TargetKind] = []
#: The component of patches written before components were recorded: format version 1 is UNet-only.
DEFAULT_COMPONENT: Final = "unet"


def register_targets(kind: TargetKind) -> TargetKind:
    """Declare what a family's patches may touch (families call this once, at import)."""
    if kind not in _KINDS:
        _KINDS.append(kind)
    return kind


def unregister_targets(kind: TargetKind) -> None:
    """Withdraw a declaration (a family that is unregistered again, as in tests)."""
    if kind in _KINDS:
        _KINDS.remove(kind)


def target_kinds(component: str | None = None) -> list[TargetKind]:
    """The registered declarations, all or those of one component."""
    return [k for k in _KINDS if component is None or k.component == component]


def components() -> list[str]:
    return list(dict.fromkeys(k.component for k in _KINDS))


def is_encoder(component: str) -> bool:
    """Whether ``component`` is a text encoder whose layers a patch may carry beside its key/value factors."""
    return any(k.encoder for k in target_kinds(component))


def kind_of(component: str, module: str) -> TargetKind | None:
    """The declaration that allows ``module`` on ``component``, or None."""
    return next((k for k in target_kinds(component) if k.matches(module)), None)


def kind_for(component: str, modules: list[str]) -> TargetKind:
    """The one declaration that allows every module of a patch (its regex goes into the file header)."""
    for kind in target_kinds(component):
        if all(kind.matches(m) for m in modules):
            return kind
    if not target_kinds(component):
        raise UnknownNameError(
            f"no model family patches the component {component!r}; known components: {', '.join(components())}"
        )
    raise UnknownNameError(
        f"modules {modules[:3]} of {component!r} do not all belong to one family's targets "
        f"({'; '.join(k.description for k in target_kinds(component))})"
    )


def describe_targets() -> str:
    return "; ".join(f"{k.component}: {k.description}" for k in _KINDS) or "none registered"
