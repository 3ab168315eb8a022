"""Layer 4, how it is forgotten: one LoRA training loop with pluggable losses (``loop``, ``lora``, ``losses``), used by
re-steering (``resteer``; its config in ``train_config``, its steps in ``steps``, what it samples in ``dataset`` and
``samples``, the budget each start needs in ``budget``; its ``robust`` rounds, with ``kv_attack`` as a cheap inner
attack, and ``encoder``, a text-encoder part fitted in the encoder's output space), concept correction
(``correct``), textual inversion (``inversion``) and the faithful FMN baseline (``baseline``); the closed-form edit
(``edit``, ``editor``, ``solver``); one patch per concept of a list, with a manifest checked on resume (``each``,
``manifest``); what a user asks for, as the CLI and the page take it (``request``)."""

from .baseline import FMNConfig, FMNReport, train_fmn_baseline
from .correct import CorrectConfig, attribute_variants, correct_patch, variant_pairs
from .each import EachConfig, EachReport, Recipe, build_each
from .edit import edit_patch
from .editor import EditConfig, EditReport
from .inversion import InversionConfig, LearnedTokens, learn_tokens
from .request import (
    BASE_ENV,
    METHODS,
    BaseOutlook,
    ForgetRequest,
    Method,
    configured_base,
    forget,
    outlook,
    patch_filename,
    refuse_early,
    refuse_local,
)
from .resteer import TrainConfig, train_patch, train_patch_with_inversion

__all__ = [
    "BASE_ENV",
    "METHODS",
    "BaseOutlook",
    "CorrectConfig",
    "EachConfig",
    "EachReport",
    "EditConfig",
    "EditReport",
    "FMNConfig",
    "FMNReport",
    "ForgetRequest",
    "InversionConfig",
    "LearnedTokens",
    "Method",
    "Recipe",
    "TrainConfig",
    "attribute_variants",
    "build_each",
    "configured_base",
    "correct_patch",
    "edit_patch",
    "forget",
    "learn_tokens",
    "outlook",
    "patch_filename",
    "refuse_early",
    "refuse_local",
    "train_fmn_baseline",
    "train_patch",
    "train_patch_with_inversion",
    "variant_pairs",
]
