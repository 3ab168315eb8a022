"""What a user asks for when they forget something, as the CLI and the web page both take it: the base (an option,
else FMNPATCH_BASE, else the world that knows every concept), the concepts or a preset, the method, and the file
name the patch gets. The early refusals live here too, so that a base's family refuses a method before minutes of
loading, in the same words at the command line and in the page.

``ForgetRequest`` holds the few choices the page offers; ``forget`` turns one into a patch with one call. The CLI,
which offers every option, calls the functions below it one by one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .. import values
from ..concepts.bench import Concept, load_bench
from ..concepts.presets import Preset, known_presets, load_preset, preset_concepts
from ..errors import FmnPatchError
from ..families.base import Base, load_base, peek_family
from ..families.registry import named_base, named_bases
from ..files import slug
from ..format.patch import Patch
from ..values import MAX_STEPS
from .edit import edit_patch
from .editor import EditConfig
from .resteer import ROBUST_ROUNDS, TrainConfig, train_patch

#: The environment variable that names the base once for every command.
BASE_ENV = "FMNPATCH_BASE"
#: How a patch is made: the closed-form edit, re-steering, or re-steering in adversarial rounds.
Method = Literal["edit", "train", "robust"]
METHODS: tuple[str, ...] = get_args(Method)
MAX_RANK = 1024  # no key/value projection of a supported family is wider than this


def configured_base(base: str | None, concepts: Sequence[str]) -> str:
    """The base a job runs on: ``base``, else FMNPATCH_BASE, else the named world (the bundled toy model) whose
    bench knows every concept; otherwise one line saying how to set one."""
    if base:
        return base
    if os.environ.get(BASE_ENV):
        return os.environ[BASE_ENV]
    names = [c.split("=")[0].strip() for c in concepts]
    for world in named_bases():
        bench = load_bench(world.bench)
        if names and all(bench.find(n) is not None for n in names):
            return world.name
    shown = ", ".join(repr(n) for n in names[:3]) or "these concepts"
    raise FmnPatchError(
        f"no base model for {shown}: pass --base (a diffusers folder, a Hub repo id, or toy) or set it once with "
        f"{BASE_ENV}, e.g. `export {BASE_ENV}=./sd15`"
    )


def refuse_local(base: str) -> None:
    """Refuse a base that names this machine's files (for a hosted page): registered names and Hub ids only."""
    if named_base(base) is not None:
        return
    if Path(base).exists() or base.startswith(("/", ".", "~")) or "\\" in base or base.count("/") != 1:
        raise FmnPatchError(
            f"base {base!r} is refused: this page does not read local folders; give toy or a Hub repo id (ORG/NAME)"
        )


def refuse_early(base: str, method: Method) -> None:
    """Refuse, before loading anything, a method the base's family does not serve, where its index tells the
    family (a registered name or a local folder; a Hub id is told only once loaded)."""
    known = peek_family(base)
    if known is None:
        return
    if method == "edit":
        known.require_closed_form()
    elif method == "robust":
        known.require_robust()


@dataclass(frozen=True)
class BaseOutlook:
    """What is known of a base before it loads: its family as its index names it, and the methods it serves."""

    family: str | None  # the family's registry name (unet, sd3, flux); None: told only once loaded (a Hub id)
    refusals: dict[str, str]  # method -> the one line that refuses it

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m in METHODS if m not in self.refusals)


def outlook(base: str) -> BaseOutlook:
    """``base``'s family and the methods it serves, read from its index without loading it."""
    known = peek_family(base)
    refusals = {}
    for method in METHODS:
        try:
            refuse_early(base, method)  # type: ignore[arg-type]  # one of METHODS
        except FmnPatchError as e:
            refusals[method] = str(e)
    return BaseOutlook(known.name if known is not None else None, refusals)


def chosen_preset(preset: str | None, names: Sequence[str], *, local_paths: bool = True) -> Preset | None:
    """The preset named ``preset`` with ``names`` joined to its terms (None: no preset); ``local_paths=False``
    takes shipped presets only, not a JSON file."""
    if preset is None:
        return None
    if not local_paths and preset not in known_presets():
        raise FmnPatchError(
            f"preset {preset!r} is not one of the shipped ones ({', '.join(known_presets())})"
        )
    return load_preset(preset).with_terms(names)


def wanted_concepts(
    names: Sequence[str], preset: Preset | None, anchor: str | None = None
) -> list[str | Concept]:
    """What to forget: the names, or the preset's terms (which carry their aliases, templates and anchor)."""
    if preset is not None:
        return list(preset_concepts(preset, anchor))
    if not names:
        raise FmnPatchError("no concept given; name one (e.g. circle) or choose a preset (nsfw)")
    return list(names)


def patch_filename(names: Sequence[str], preset: Preset | None = None) -> str:
    """The file a patch of ``names`` (or of ``preset``) gets by default: ``forget-<first>[-and-N-more].safetensors``,
    a safe file name whatever the names hold."""
    if preset is not None:
        return f"forget-{slug(preset.name) or 'preset'}.safetensors"
    first = slug(names[0].split("=")[0]) if names else ""
    stem = first or "concept"
    return f"forget-{stem if len(names) <= 1 else f'{stem}-and-{len(names) - 1}-more'}.safetensors"


@dataclass(frozen=True)
class ForgetRequest:
    """One patch, as the web page asks for it; the CLI's ``edit`` and ``train`` offer every option besides."""

    concepts: tuple[str, ...] = ()  # NAME or NAME=ALIAS,ALIAS
    preset: str | None = None  # a shipped concept list (nsfw); the concepts join its terms
    base: str | None = None  # None: FMNPATCH_BASE, else the world whose bench knows every concept
    method: Method = "edit"
    category: str | None = None  # identity, object, style or nsfw, for concepts the bench does not know
    anchor: str | None = None  # what the concepts become; None: the preset's, else the bench's per category
    rank: int | None = None  # None: the method's default (edit 16, train 4)
    steps: int | None = None  # training steps per concept; None: what the start needs (not used by edit)
    seed: int = 0
    robust_rounds: int = ROBUST_ROUNDS  # with method "robust"
    local_paths: bool = True  # False (a hosted page): refuse local folder bases and preset files
    names: tuple[str, ...] = field(init=False)  # the concepts, stripped, empty ones dropped

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FmnPatchError(
                f"method {self.method!r} is not one of {', '.join(METHODS)}; choose one of them"
            )
        names = tuple(c.strip() for c in self.concepts if c.strip())
        if not names and self.preset is None:
            raise FmnPatchError("no concept given; name one (e.g. circle) or choose a preset (nsfw)")
        if self.preset is not None and self.category is not None:
            raise FmnPatchError(
                f"a category does not combine with preset {self.preset!r}: every concept of a preset has its own"
            )
        object.__setattr__(self, "names", names)
        if self.rank is not None:
            values.whole(self.rank, "rank", 1, MAX_RANK, example=4)
        if self.steps is not None:
            values.whole(self.steps, "steps", 1, MAX_STEPS, example=15)
        values.seed(self.seed)
        if self.method == "robust":
            values.whole(self.robust_rounds, "robust_rounds", 1, 100, example=ROBUST_ROUNDS)

    def chosen_preset(self) -> Preset | None:
        return chosen_preset(self.preset, self.names, local_paths=self.local_paths)

    def base_ref(self) -> str:
        """The base this request runs on, checked before any loading: the page's policy, the family's refusal."""
        preset = self.chosen_preset()
        ref = configured_base(self.base, [preset.name] if preset is not None else self.names)
        if not self.local_paths:
            refuse_local(ref)
        refuse_early(ref, self.method)
        return ref

    def filename(self) -> str:
        return patch_filename(self.names, self.chosen_preset())


def forget(
    request: ForgetRequest, base: Base | None = None, *, device: str = "cpu", dtype: str = "float32"
) -> Patch:
    """The patch ``request`` asks for: its base loaded (unless ``base`` is given), then edited or trained."""
    ref = request.base_ref()
    preset = request.chosen_preset()
    wanted = wanted_concepts(request.names, preset, request.anchor)
    category = None if preset is not None else request.category
    model = base if base is not None else load_base(ref, device=device, dtype=dtype)
    if request.method == "edit":
        rank = request.rank if request.rank is not None else EditConfig.rank
        return edit_patch(
            model, wanted, anchor=request.anchor, config=EditConfig(rank=rank), category=category
        )
    config: dict[str, Any] = {"seed": request.seed, "anchor": request.anchor}
    if request.rank is not None:
        config["rank"] = request.rank
    if request.steps is not None:
        config["steps"] = request.steps
    if request.method == "robust":
        config["robust_rounds"] = request.robust_rounds
    return train_patch(model, wanted, TrainConfig(**config), categories=category)
