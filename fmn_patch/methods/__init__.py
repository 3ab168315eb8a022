"""Layer 4, how it is forgotten: one LoRA training loop with pluggable losses (``loop``, ``lora``), used by
re-steering (``resteer``, with its ``robust`` rounds), concept correction (``correct``), textual inversion
(``inversion``) and the faithful FMN baseline (``baseline``); the closed-form edit (``edit``, ``editor``,
``solver``); one patch per concept of a list, with a manifest (``each``)."""

from .baseline import FMNConfig, FMNReport, train_fmn_baseline
from .correct import CorrectConfig, attribute_variants, correct_patch, variant_pairs
from .each import EachConfig, EachReport, build_each
from .edit import edit_patch
from .editor import EditConfig, EditReport
from .inversion import InversionConfig, LearnedTokens, learn_tokens
from .resteer import TrainConfig, train_patch, train_patch_with_inversion

__all__ = [
    "CorrectConfig",
    "EachConfig",
    "EachReport",
    "EditConfig",
    "EditReport",
    "FMNConfig",
    "FMNReport",
    "InversionConfig",
    "LearnedTokens",
    "TrainConfig",
    "attribute_variants",
    "build_each",
    "correct_patch",
    "edit_patch",
    "learn_tokens",
    "train_fmn_baseline",
    "train_patch",
    "train_patch_with_inversion",
    "variant_pairs",
]
