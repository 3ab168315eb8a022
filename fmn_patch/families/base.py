"""The base model: a loaded diffusers pipeline together with its family and, when it has one, its world.

``load_base`` takes a registered name (``toy``), a local diffusers folder or a Hub repo id. ``as_base`` wraps a
pipeline you already have. Either way the family is found by asking the registered families, and the world (which
decides default benches and anchors) by the pipeline's contents, so the toy model loaded by its folder path is the
same base as ``toy``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from ..devices import check_device
from ..errors import FmnPatchError
from ..progress import phase
from .family import Family
from .folder import check_folder, read_index
from .loading import check_pipeline, library_output_caught, load_folder

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

from .registry import (
    NamedBase,
    family_for_index,
    family_named_in_index,
    family_of,
    named_base,
    named_bases,
    world_of,
)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SNAPSHOT = re.compile(r"^models--(?P<org>[\w.-]+?)--(?P<name>[\w.-]+)$")


def _hub_snapshot(folder: Path) -> tuple[str, str] | None:
    """(Hub id, commit) of a folder inside the Hugging Face cache: ``models--ORG--NAME/snapshots/<commit>/...``."""
    parts = folder.parts
    for i in range(len(parts) - 2):
        m = _SNAPSHOT.match(parts[i])
        if m and parts[i + 1] == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parts[i + 2]):
            return f"{m['org']}/{m['name']}", parts[i + 2]
    return None


def _recorded_hub_id(folder: Path) -> str | None:
    """The Hub id a pipeline folder records as ``_name_or_path`` in its ``model_index.json``, if it is one."""
    try:
        value = read_index(folder).get("_name_or_path")
    except FmnPatchError:
        return None
    return value if isinstance(value, str) and _HUB_ID.match(value) and not Path(value).exists() else None


@dataclass(frozen=True)
class BaseInfo:
    """What a patch records about the base it was made for."""

    model: str | None
    revision: str | None
    hash: str
    architecture: str


@dataclass
class Base:
    """A loaded base model: the diffusers pipeline, its family (the only way the package reaches the model) and
    the world it belongs to (``toy``) when it is recognised as one of a registered world's models."""

    pipe: Any
    family: Family
    ref: str | None = None  # what it was loaded from: a registered name, a folder, a Hub id
    revision: str | None = None
    world: NamedBase | None = None

    @property
    def bench(self) -> str:
        """The ConceptBench this base is measured on by default: its world's, else ``real``."""
        return self.world.bench if self.world is not None else "real"

    @property
    def architecture(self) -> str:
        """ModelSpec architecture id (``fmn-toy`` for the toy world, else the family's)."""
        if self.world is not None and self.world.architecture:
            return self.world.architecture
        return self.family.identity.architecture()

    def describe(self) -> BaseInfo:
        """Name, revision, target-weight hash and architecture (before any patch is fused).

        The name never leaks a local path into a patch header: a registered world's model is named by its world;
        a model from the Hub (or a local copy of one: a Hugging Face cache snapshot, or a folder whose
        ``model_index.json`` records a Hub id as ``_name_or_path``) by its Hub id and commit; any other folder by its
        folder name only (the weight hash identifies it)."""
        model, revision = self._identity()
        return BaseInfo(
            model=model,
            revision=revision,
            hash=self.family.identity.target_hash(),
            architecture=self.architecture,
        )

    def _identity(self) -> tuple[str | None, str | None]:
        ref = self.ref or getattr(self.pipe, "name_or_path", None)
        if ref is None:
            return (self.world.name if self.world is not None else None), self.revision
        ref = str(ref)
        local = Path(ref).expanduser()
        if self.world is not None and (ref == self.world.name or local.exists()):
            return (
                self.world.name,
                None,
            )  # a world's model loaded by path is named by its world, not by the path
        snapshot = _hub_snapshot(
            Path(str(getattr(self.family.adapters.denoiser.config, "_name_or_path", "") or ""))
        )
        if not local.exists() and _HUB_ID.match(ref):  # from the Hub
            return ref, (snapshot[1] if snapshot and snapshot[0] == ref else self.revision)
        if local.exists():
            recorded = _recorded_hub_id(local)
            if snapshot is None:
                snapshot = _hub_snapshot(local)
            if snapshot is not None:
                return snapshot
            if recorded is not None:
                return recorded, self.revision
            return local.resolve().name or None, self.revision
        return Path(ref).name or None, self.revision  # neither a folder here nor a Hub id: no path recorded

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Generate with the pipeline itself: ``base("a red circle").images[0]``."""
        return self.pipe(*args, **kwargs)


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise FmnPatchError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}") from None


def default_bench(ref: str) -> str | None:
    """The bench a base given by a registered name is measured on, known before it loads (None: load it and
    ask ``Base.bench``)."""
    named = named_base(ref)
    return named.bench if named is not None else None


#: What a public call takes as its model: a loaded ``Base``, or a diffusers pipeline it wraps once (``as_base``).
BaseLike: TypeAlias = "Base | DiffusionPipeline"


def as_base(pipe: BaseLike, *, ref: str | None = None, revision: str | None = None) -> Base:
    """A ``Base`` for a diffusers pipeline (a ``Base`` is returned as it is)."""
    if isinstance(pipe, Base):
        return pipe
    family = family_of(pipe)
    return Base(pipe, family(pipe), ref, revision, world_of(pipe))


def check_base(ref: str) -> None:
    """Check base ``ref``'s folder without loading it (a registered name or a local folder: ``folder.check_folder``);
    raises ``FmnPatchError`` naming the problem and its fix. A Hub id is checked as it loads."""
    source = _source(ref)
    if Path(source).is_dir():
        check_folder(source)


def load_base(ref: str, *, device: str = "cpu", dtype: str = "float32", revision: str | None = None) -> Base:
    """Load a base: a registered name (``toy``: the bundled toy model), a local diffusers folder, or a Hub repo id.

    A folder is checked before any library reads it, and each component as it loads (``folder``, ``loading``):
    a damaged one is refused in one line naming the component, and no weight that is NaN, infinite or an integer
    gets through. A pipeline from the Hub gets the same checks of its loaded weights and tokenizers."""
    check_device(device, "device")
    torch_dtype = parse_dtype(dtype)
    named = named_base(ref)
    source = _source(ref)
    layout = check_folder(source) if Path(source).is_dir() else None
    loader = family_for_index(read_index(Path(source))) if layout is not None else None
    try:
        with phase(f"loading base {ref}"), library_output_caught():
            if layout is not None and loader is None:
                pipe = load_folder(layout, torch_dtype)  # each component checked as it loads
            else:
                if loader is not None:
                    pipe = loader.load(source, dtype=torch_dtype, revision=revision)
                else:
                    from diffusers import DiffusionPipeline

                    pipe = DiffusionPipeline.from_pretrained(source, dtype=torch_dtype, revision=revision)
                check_pipeline(pipe, ref)
    except (OSError, ValueError) as e:
        raise FmnPatchError(
            f"cannot load base {ref!r}: {str(e).splitlines()[0]}; give `toy`, a local pipeline folder, or a Hub "
            "repo id you can reach (offline: one already in the Hugging Face cache)"
        ) from e
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    base = as_base(pipe, ref=ref, revision=revision)
    if named is not None and base.world is not named:
        raise FmnPatchError(
            f"{source} holds no {ref} model of this version (one trained on an older toy world: its tokenizer "
            "reads other words); rebuild it with `make toy-model`"
        )
    return base


def _source(ref: str) -> str | os.PathLike[str]:
    """Where base ``ref`` loads from: a registered name's folder, a local folder, or ``ref`` itself (a Hub id)."""
    named = named_base(ref)
    if named is not None:
        source = named.locate()
        if not (Path(source) / "model_index.json").exists():
            raise FmnPatchError(f"the {ref} model is not built ({source} is missing); run `make toy-model`")
        return source
    if Path(ref).exists() and not Path(ref).is_dir():
        raise FmnPatchError(
            f"base {ref!r} is a file; give a diffusers pipeline folder (with model_index.json) or a Hub repo id"
        )
    if Path(ref).is_dir() and not (Path(ref) / "model_index.json").exists():
        raise FmnPatchError(f"base folder {ref!r} has no model_index.json; it is not a diffusers pipeline")
    if not Path(ref).exists() and "/" not in ref:
        names = ", ".join(n.name for n in named_bases())
        raise FmnPatchError(
            f"base {ref!r} is not a registered name ({names}), a folder or a Hub repo id (ORG/NAME)"
        )
    return ref


def peek_family(ref: str) -> type[Family] | None:
    """The family of base ``ref`` as its ``model_index.json`` names it, without loading anything: for a registered
    name or a local folder whose index names its denoiser; None where that cannot be told (a Hub id, a damaged or
    unknown folder: loading will say)."""
    named = named_base(ref)
    try:
        return family_named_in_index(read_index(Path(named.locate() if named is not None else ref)))
    except FmnPatchError:
        return None
