"""fmn-patch: make text-to-image diffusion models forget, with small LoRA patches on cross-attention keys/values.

The library is the product; the ``fmnpatch`` CLI is a thin layer over these calls::

    from fmn_patch import Patch, load_base, apply_patches

    pipe = load_base("toy")
    apply_patches(pipe, [Patch.load("forget-circle.safetensors")])
"""

from .apply import apply_patches, check_compatible, fuse_patches, remove_patches, save_pipeline
from .base import describe_base, load_base
from .errors import BaseMismatchError, FmnPatchError, NotBuiltError, PatchFileError
from .kohya import export_kohya, to_kohya
from .merge import MergeReport, merge_patches
from .patch import FORMAT_VERSION, Patch, PatchConcept, PatchInfo
from .preview import SampleConfig, preview, sample
from .summary import summarize
from .targets import find_targets, target_hash

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "BaseMismatchError",
    "FmnPatchError",
    "MergeReport",
    "NotBuiltError",
    "Patch",
    "PatchConcept",
    "PatchFileError",
    "PatchInfo",
    "SampleConfig",
    "apply_patches",
    "check_compatible",
    "describe_base",
    "export_kohya",
    "find_targets",
    "fuse_patches",
    "load_base",
    "merge_patches",
    "preview",
    "remove_patches",
    "sample",
    "save_pipeline",
    "summarize",
    "target_hash",
    "to_kohya",
]
