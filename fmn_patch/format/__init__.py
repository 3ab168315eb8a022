"""Layer 1, the patch file and nothing about models: ``Patch``/``PatchInfo``, header, hashes, target declarations,
low-rank factorisation, merging, the kohya layout and summaries."""

from .category import CATEGORIES, SHORTHANDS, Category, category_of
from .header import (
    FORMAT_VERSION,
    NAMESPACE,
    PatchConcept,
    PatchInfo,
    read_file,
    read_header,
    tensor_hash,
)
from .merge import MergeReport, check_weights, merge_patches
from .patch import Patch
from .schema import info_from_header
from .summary import render_text, summarize
from .targets import TargetKind, register_targets, target_kinds

__all__ = [
    "CATEGORIES",
    "FORMAT_VERSION",
    "NAMESPACE",
    "SHORTHANDS",
    "Category",
    "MergeReport",
    "Patch",
    "PatchConcept",
    "PatchInfo",
    "TargetKind",
    "category_of",
    "check_weights",
    "info_from_header",
    "merge_patches",
    "read_file",
    "read_header",
    "register_targets",
    "render_text",
    "summarize",
    "target_kinds",
    "tensor_hash",
]
