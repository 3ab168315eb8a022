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
        adapters = self.family.adapters
        weights = {name: layer.weight.detach().cpu() for name, layer in adapters.targets().items()}
        return _digest(weights, [(_folder_of(adapters.denoiser), {name: [name] for name in weights})])

    def encoder_hash(self) -> str | None:
        """SHA-256 of the CLIP text encoders' patchable layers (every one of ``adapters.encoder_targets``, as
        ``<component>.<module>``), as ``target_hash`` hashes the key/value targets, dtype-independent the same way;
        None for a base with no CLIP encoder. A patch with text-encoder factors records it: the key/value hash does
        not cover the encoders, and a fine-tuned encoder of the same shapes is otherwise not noticed."""
        found = self.family.adapters.encoder_targets()
        if not found:
            return None
        weights: dict[str, torch.Tensor] = {}
        stores: list[tuple[str, dict[str, list[str]]]] = []
        for component, layers in sorted(found.items()):
            keys = {}
            for module, layer in layers.items():
                name = f"{component}.{module}"
                weights[name] = layer.weight.detach().cpu()
                keys[name] = [module, module.removeprefix("text_model.")]  # files of either CLIP layout
            stores.append((_folder_of(getattr(self.pipe, component)), keys))
        return _digest(weights, stores)

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


def _folder_of(module: nn.Module) -> str:
    """The folder a component was loaded from (its config's ``_name_or_path``), or ""."""
    config = getattr(module, "config", None)
    return str(getattr(config, "_name_or_path", "") or "")


def _digest(weights: dict[str, torch.Tensor], stores: Sequence[tuple[str, dict[str, list[str]]]]) -> str:
    """SHA-256 of ``weights`` (name, shape, float32 bytes, by name); below float32 in memory, of the stored tensors
    (``_stored``) that ``stores`` finds for every one of them, else of the weights in memory."""
    import hashlib

    if any(w.dtype != torch.float32 for w in weights.values()):
        stored: dict[str, torch.Tensor] = {}
        for folder, keys in stores:
            found = _stored({n: weights[n] for n in keys}, folder, keys)
            if found is None:
                break
            stored |= found
        else:
            weights = stored
    digest = hashlib.sha256()
    for name, weight in sorted(weights.items()):
        weight = weight.to(torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(weight.shape)).encode())
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()


def _stored(
    weights: dict[str, torch.Tensor], folder: str, keys: dict[str, list[str]]
) -> dict[str, torch.Tensor] | None:
    """The tensors of ``weights`` as stored in ``folder``'s safetensors files under one of ``keys[name]`` (+
    ``.weight``), the most precise file first, each equal to the weight in memory once cast to its dtype; None if
    any is missing or differs."""
    from pathlib import Path

    import safetensors

    if not folder or not Path(folder).is_dir():
        return None
    found: dict[str, tuple[int, torch.Tensor]] = {}  # name -> (itemsize, stored tensor)
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safetensors.safe_open(str(path), "pt", device="cpu") as f:
                present = set(f.keys())
                for name, weight in weights.items():
                    key = next((f"{k}.weight" for k in keys[name] if f"{k}.weight" in present), None)
                    if key is None:
                        continue
                    tensor = f.get_tensor(key)
                    size = tensor.element_size()
                    if size > found.get(name, (0, None))[0] and torch.equal(tensor.to(weight.dtype), weight):
                        found[name] = (size, tensor)
        except (OSError, safetensors.SafetensorError):
            continue
    if set(found) != set(weights):
        return None
    return {name: tensor for name, (_, tensor) in found.items()}
