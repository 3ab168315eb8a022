"""The family protocol: the one seam between the package and a model architecture.

A ``Family`` wraps one loaded diffusers pipeline and composes five role objects, each answering one kind of
question a method, an attack, the evaluator or the stacker asks of the model:

- ``family.text`` (``text.Text``): prompts to conditioning, where a concept's tokens sit, learned tokens;
- ``family.noise`` (``noise.Noise``): noising, the prediction target, one denoiser call, attention capture;
- ``family.images`` (``images.Images``): image size, VAE latents, sampling with the pipeline's own call;
- ``family.adapters`` (``adapters.Adapters``): the denoiser module, the layers a patch touches, LoRA verbs;
- ``family.identity`` (``identity.Identity``): base hashes, the ModelSpec architecture, kohya names.

Nothing outside ``fmn_patch.families`` reaches into ``pipe.unet``, ``pipe.transformer``, tokenizers or attention
processors. The family itself only recognises and loads its pipelines and says which methods it refuses.

A family is a subclass naming its five role classes, registered with ``register_family``; what every diffusers
LoRA pipeline does the same way is implemented in the role base classes. Class-level answers that need no pipeline
(which architectures are its own, kohya names) are classmethods of its identity role: ``Family.identity_role``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from .adapters import Adapters
from .identity import Identity
from .images import Images
from .noise import Noise
from .text import Text


class Family(ABC):
    """One architecture family's answers about a loaded pipeline (``self.pipe``), by role."""

    name: ClassVar[str]  # registry name, e.g. "unet"
    text_role: ClassVar[type[Text]]
    noise_role: ClassVar[type[Noise]]
    images_role: ClassVar[type[Images]]
    adapters_role: ClassVar[type[Adapters]]
    identity_role: ClassVar[type[Identity]]

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.text = self.text_role(self)
        self.noise = self.noise_role(self)
        self.images = self.images_role(self)
        self.adapters = self.adapters_role(self)
        self.identity = self.identity_role(self)

    @classmethod
    @abstractmethod
    def claims(cls, pipe: Any) -> bool:
        """Whether a loaded pipeline is of this family."""

    @classmethod
    def named_in_index(cls, model_index: dict[str, Any]) -> bool:
        """Whether a ``model_index.json`` names this family's denoiser (False: cannot tell); for early refusals."""
        return False

    @classmethod
    def claims_index(cls, model_index: dict[str, Any]) -> bool:
        """Whether this family loads a folder itself (its ``model_index.json`` says so), not diffusers."""
        return False

    @classmethod
    def load(cls, source: Any, *, dtype: torch.dtype, revision: str | None) -> Any:
        """Load a pipeline of this family; the default is diffusers' ``DiffusionPipeline.from_pretrained``."""
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(source, dtype=dtype, revision=revision)

    @classmethod
    def require_closed_form(cls) -> None:
        """Refuse (one line, with the reason) where the closed-form edit does not serve the family."""
        return None

    @classmethod
    def require_robust(cls) -> None:
        """Refuse (one line, with the reason) where adversarial rounds (``--robust``) do not serve the family."""
        return None
