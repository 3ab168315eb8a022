"""The identity role (``family.identity``): what a patch records about its base and how other tools name its
modules. The base hashes (``target_hash``, ``fingerprint``) are the same for every diffusers pipeline; a family
answers its ModelSpec architecture id and, at class level (export needs no pipeline), which recorded architectures
are its own and kohya's names for them.

The class-level answers are classmethods, reached through the family class as ``Family.identity_role`` (the
registry's ``family_for_architecture``, kohya export) and through a loaded base as ``family.identity``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .role import Role


class Identity(Role, ABC):
    """The base's hashes, its ModelSpec architecture and the kohya names of its modules."""

    kohya_form: ClassVar[bool] = True  # False: no kohya export (its UIs read the native file)

    def target_hash(self) -> str:
        """SHA-256 of the base weights a patch touches: name, shape and float32 bytes of each target, by name.

        Independent of the dtype the pipeline was loaded in: when the weights in memory are of lower precision than
        float32, they are hashed from the tensors in the denoiser's own safetensors files instead, once each is
        checked to be exactly what is in memory after casting (so a patch made on a float32 model fits the same
        files loaded in bfloat16 or float16, while a modified model, e.g. one with a patch fused in, still hashes
        as what it is)."""
        import hashlib

        weights = {
            name: layer.weight.detach().cpu() for name, layer in self.family.adapters.targets().items()
        }
        if any(w.dtype != torch.float32 for w in weights.values()):
            weights = self._stored_weights(weights) or weights
        digest = hashlib.sha256()
        for name, weight in sorted(weights.items()):
            weight = weight.to(torch.float32).contiguous()
            digest.update(name.encode())
            digest.update(str(tuple(weight.shape)).encode())
            digest.update(weight.numpy().tobytes())
        return digest.hexdigest()

    def _stored_weights(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """The tensors of ``weights`` as stored in the denoiser's safetensors files (the most precise file first),
        each one equal to the weight in memory once cast to its dtype; None if any is missing or differs."""
        from pathlib import Path

        import safetensors

        folder = Path(str(getattr(self.family.adapters.denoiser.config, "_name_or_path", "") or ""))
        if not folder.is_dir():
            return None
        found: dict[str, tuple[int, torch.Tensor]] = {}  # name -> (itemsize, stored tensor)
        for path in sorted(folder.glob("*.safetensors")):
            try:
                with safetensors.safe_open(str(path), "pt", device="cpu") as f:
                    keys = set(f.keys())
                    for name, weight in weights.items():
                        key = f"{name}.weight"
                        if key not in keys:
                            continue
                        stored = f.get_tensor(key)
                        size = stored.element_size()
                        if size > found.get(name, (0, None))[0] and torch.equal(
                            stored.to(weight.dtype), weight
                        ):
                            found[name] = (size, stored)
            except (OSError, safetensors.SafetensorError):
                continue
        if set(found) != set(weights):
            return None
        return {name: stored for name, (_, stored) in found.items()}

    def fingerprint(self) -> str:
        """SHA-256 of everything that decides the pipeline's images: every component's weights (name, dtype, shape,
        bytes), its config (paths left out) and class, the scheduler's config, the tokenizers' vocabularies and the
        device type. Two bases that differ anywhere (a fine-tuned UNet, another VAE or text encoder, a scheduler,
        a dtype, a fused patch) differ here; the same files loaded twice do not."""
        import hashlib
        import json

        digest = hashlib.sha256()
        digest.update(self.family.adapters.device.type.encode())
        for name, component in sorted(self.pipe.components.items()):
            digest.update(f"|{name}:{type(component).__module__}.{type(component).__qualname__}|".encode())
            config = getattr(component, "config", None)
            if config is not None:
                items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
                kept = {
                    k: v for k, v in items.items() if not k.startswith("_") and k != "transformers_version"
                }
                digest.update(json.dumps(kept, sort_keys=True, default=str).encode())
            if isinstance(component, nn.Module):
                for key, tensor in component.state_dict().items():
                    t = tensor.detach().cpu().contiguous()
                    digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
                    if t.numel():
                        digest.update(t.reshape(-1).view(torch.uint8).numpy())
            elif hasattr(component, "get_vocab"):
                digest.update(json.dumps(sorted(component.get_vocab().items())).encode())
                digest.update(str(getattr(component, "model_max_length", "")).encode())
        return digest.hexdigest()

    @abstractmethod
    def architecture(self) -> str:
        """ModelSpec architecture id of the base (``stable-diffusion-v1``, ``stable-diffusion-xl-v1-base``, ...)."""

    # ------------------------------------------------------------------- class level: no pipeline needed
    @classmethod
    @abstractmethod
    def serves_architecture(cls, architecture: str) -> bool:
        """Whether patches recorded with this ModelSpec architecture belong to this family (for kohya export)."""

    @classmethod
    @abstractmethod
    def kohya_names(cls, modules: Sequence[str], architecture: str, **layout: int) -> dict[str, str]:
        """The kohya key stem of each module (``lora_unet_...``), as the UIs name it for this architecture."""

    @classmethod
    @abstractmethod
    def kohya_version(cls, architecture: str) -> str:
        """kohya's ``ss_base_model_version`` for the architecture."""

    @classmethod
    def to_kohya(cls, patch: Any, **layout: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Tensors and header of the kohya form of ``patch`` (a ``Patch``): one kohya stem per module."""
        from ..format.kohya import to_kohya

        names = cls.kohya_names(patch.modules, patch.info.architecture, **layout)
        header = cls.kohya_header(patch.info.architecture, patch.modules, **layout)
        return to_kohya(patch, names, header, cls.kohya_encoder_prefixes(patch.info.architecture))

    @classmethod
    def kohya_encoder_prefixes(cls, architecture: str) -> dict[str, str]:
        """The kohya stem prefix of each CLIP text encoder, as sd-scripts writes and ComfyUI and diffusers read it:
        ``lora_te1`` the first, ``lora_te2`` the second (SDXL, SD3; Flux has one CLIP)."""
        return {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}

    @classmethod
    def kohya_header(cls, architecture: str, modules: Sequence[str] = (), **layout: int) -> dict[str, str]:
        """A kohya export's header keys: ``ss_base_model_version``, ``ss_v2``, the keys' implementation..."""
        return {"ss_base_model_version": cls.kohya_version(architecture)}
