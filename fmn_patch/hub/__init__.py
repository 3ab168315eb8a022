"""Layer 6, patches on the Hugging Face Hub: ``hf://`` references, pull and push (with a model card generated
from the header), and the catalog search of community patches. Only huggingface_hub's public API is used."""

from .card import PROJECT_TAG, WEIGHT_NAME, model_card
from .catalog import HubPatch, search
from .errors import (
    FileNotInRepoError,
    HubError,
    NotLoggedInError,
    OfflineError,
    RepoNotFoundError,
    hub_errors,
)
from .refs import HubRef, as_ref, is_hub_ref
from .transfer import GRID_NAME, Pulled, Pushed, card_preview, pull, push, resolve

__all__ = [
    "GRID_NAME",
    "PROJECT_TAG",
    "WEIGHT_NAME",
    "FileNotInRepoError",
    "HubError",
    "HubPatch",
    "HubRef",
    "NotLoggedInError",
    "OfflineError",
    "Pulled",
    "Pushed",
    "RepoNotFoundError",
    "as_ref",
    "card_preview",
    "hub_errors",
    "is_hub_ref",
    "model_card",
    "pull",
    "push",
    "resolve",
    "search",
]
