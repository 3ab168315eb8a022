"""fmn-patch: make text-to-image diffusion models forget, with small LoRA patches on cross-attention keys/values.

The library is the product; the ``fmnpatch`` CLI is a thin layer over these calls::

    from fmn_patch import Patch, load_base, apply_patches, train_patch

    base = load_base("toy")
    patch = train_patch(base, ["circle"])
    apply_patches(base, [patch])
    image = base("a red circle").images[0]

The package is in layers (see ARCHITECTURE.md): ``errors``/``files`` < ``format`` < ``families`` < ``concepts`` <
``methods``, ``evaluation`` < ``attacks`` < ``hub``, ``toy`` < ``cli``; a module imports its own layer or lower.
"""
# ruff: noqa: E402  (the imports below come after startup.guard on purpose)

from .startup import guard

guard()  # fmnpatch's first seconds are these imports: Ctrl-C there exits 130 without a traceback (startup.py)

from . import toy  # registers the toy world: base, bench and judge "toy"
from .attacks import AttackConfig, AttackReport, InversionAttackConfig, SearchConfig, run_attacks
from .concepts import Bench, Concept, Preset, known_presets, load_bench, load_preset, preset_concepts
from .errors import (
    BaseMismatchError,
    BenchError,
    FmnPatchError,
    PatchFileError,
    UnknownNameError,
)
from .evaluation import (
    EvalReport,
    SampleConfig,
    SamplerConfig,
    check_prompts,
    evaluate_patches,
    load_judge,
    preview,
    sample,
    score_correction,
    write_report,
)
from .families import (
    Base,
    BaseInfo,
    BaseMismatchWarning,
    Family,
    apply_patches,
    as_base,
    check_compatible,
    export_kohya,
    fuse_patches,
    load_base,
    register_family,
    remove_patches,
    save_pipeline,
    to_kohya,
)
from .format import (
    CATEGORIES,
    FORMAT_VERSION,
    Category,
    MergeReport,
    Patch,
    PatchConcept,
    PatchInfo,
    category_of,
    merge_patches,
    render_text,
    summarize,
)
from .hub import HubRef, card_preview, pull, push
from .hub import search as search_hub
from .methods import (
    BASE_ENV,
    METHODS,
    BaseOutlook,
    CorrectConfig,
    EachConfig,
    EachReport,
    EditConfig,
    FMNConfig,
    ForgetRequest,
    InversionConfig,
    TrainConfig,
    build_each,
    configured_base,
    correct_patch,
    edit_patch,
    forget,
    outlook,
    patch_filename,
    refuse_local,
    train_fmn_baseline,
    train_patch,
    train_patch_with_inversion,
)
from .progress import Cancelled, Event, listening, phase
from .text import printable

search = search_hub
__version__ = "0.1.0"

__all__ = [
    "BASE_ENV",
    "CATEGORIES",
    "FORMAT_VERSION",
    "METHODS",
    "AttackConfig",
    "AttackReport",
    "Base",
    "BaseInfo",
    "BaseMismatchError",
    "BaseMismatchWarning",
    "BaseOutlook",
    "Bench",
    "BenchError",
    "Cancelled",
    "Category",
    "Concept",
    "CorrectConfig",
    "EachConfig",
    "EachReport",
    "EditConfig",
    "EvalReport",
    "Event",
    "FMNConfig",
    "Family",
    "FmnPatchError",
    "ForgetRequest",
    "HubRef",
    "InversionAttackConfig",
    "InversionConfig",
    "MergeReport",
    "Patch",
    "PatchConcept",
    "PatchFileError",
    "PatchInfo",
    "Preset",
    "SampleConfig",
    "SamplerConfig",
    "SearchConfig",
    "TrainConfig",
    "UnknownNameError",
    "apply_patches",
    "as_base",
    "build_each",
    "card_preview",
    "category_of",
    "check_compatible",
    "check_prompts",
    "configured_base",
    "correct_patch",
    "edit_patch",
    "evaluate_patches",
    "export_kohya",
    "forget",
    "fuse_patches",
    "known_presets",
    "listening",
    "load_base",
    "load_bench",
    "load_judge",
    "load_preset",
    "merge_patches",
    "outlook",
    "patch_filename",
    "phase",
    "preset_concepts",
    "preview",
    "printable",
    "pull",
    "push",
    "refuse_local",
    "register_family",
    "remove_patches",
    "render_text",
    "run_attacks",
    "sample",
    "save_pipeline",
    "score_correction",
    "search",
    "search_hub",
    "summarize",
    "to_kohya",
    "toy",
    "train_fmn_baseline",
    "train_patch",
    "train_patch_with_inversion",
    "write_report",
]


def __getattr__(name: str) -> object:
    """Names kept one release after their removal, each with a ``DeprecationWarning``."""
    if name == "NotBuiltError":
        from . import errors

        return getattr(errors, name)  # warns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
