"""The adapters role (``family.adapters``): the module a patch sits on, the layers it may touch, and diffusers' own
LoRA verbs on it, so that a patch applied here behaves exactly as one loaded by stock diffusers.

A family answers one question: ``targets()``, every text-side key/value projection a patch may touch. The text
encoders' layers a patch may carry beside them (``encoder_targets``, CLIP self-attention and MLP) and the verbs
(``load_adapter``, ``set_adapters``, ``fuse_adapters``, ``delete_adapters``, ...) are the same for every diffusers
LoRA pipeline and are implemented here; every verb acts on the denoiser and the text encoders together."""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..errors import BaseMismatchError, FmnPatchError
from ..format.targets import TargetKind
from . import encoders
from .role import Role


class Adapters(Role, ABC):
    """What a patch touches on a loaded pipeline, and how adapters are put on and taken off it."""

    component: ClassVar[str]  # the pipeline attribute LoRA sits on, and the patch-key prefix: "unet"
    targets_kind: ClassVar[TargetKind]  # what its patches may touch (registered with the file format)

    @property
    def denoiser(self) -> Any:
        """The module LoRA adapters sit on (the UNet, the transformer): a diffusers ``ModelMixin``."""
        return getattr(self.pipe, self.component)

    @abstractmethod
    def targets(self) -> dict[str, nn.Linear]:
        """Every text-side key/value projection a patch may touch, by module name in model order (the base
        ``nn.Linear``, unwrapped from any loaded adapter)."""

    def target_shapes(self) -> dict[str, tuple[int, int]]:
        """(out, in) of every target."""
        return {name: (layer.out_features, layer.in_features) for name, layer in self.targets().items()}

    def is_target(self, name: str) -> bool:
        return self.targets_kind.matches(name)

    def check_module(self, module: str, shape: tuple[int, int]) -> None:
        """Refuse a patch module that is not a target of this base, or has another (out, in) shape."""
        shapes = self.target_shapes()
        if module not in shapes:
            raise BaseMismatchError(
                f"patch module {module} does not exist in this {type(self.denoiser).__name__}"
            )
        if shapes[module] != shape:
            raise BaseMismatchError(
                f"shape mismatch at {module}: patch delta is {shape[0]}x{shape[1]}, the layer is "
                f"{shapes[module][0]}x{shapes[module][1]}"
            )

    # ------------------------------------------------------------------------------------ text encoders
    def encoder_targets(self) -> dict[str, dict[str, nn.Linear]]:
        """The CLIP text encoders' patchable layers, by component (``text_encoder``, ``text_encoder_2``) and written
        module name; an encoder that is absent or not CLIP (Flux's and SD3's T5) has none and is left out."""
        found = {}
        for component in encoders.COMPONENTS:
            encoder = getattr(self.pipe, component, None)
            layers = (
                encoders.find_encoder_targets(encoder, component) if isinstance(encoder, nn.Module) else {}
            )
            if layers:
                found[component] = layers
        return found

    @contextlib.contextmanager
    def encoder_copies(self) -> Iterator[dict[str, nn.Module]]:
        """float32 copies of the CLIP text encoders (``encoder_targets``' components), in the pipeline's place for
        the block, so that everything that encodes a prompt reads them; the originals are put back on exit and are
        never changed (what a text-encoder fit trains)."""
        originals = {c: getattr(self.pipe, c) for c in self.encoder_targets()}
        copies = {c: copy.deepcopy(e).float() for c, e in originals.items()}
        try:
            for component, clone in copies.items():
                setattr(self.pipe, component, clone)
            yield copies
        finally:
            for component, original in originals.items():
                setattr(self.pipe, component, original)

    def check_encoder_module(self, component: str, module: str, shape: tuple[int, int]) -> None:
        """Refuse a text-encoder factor whose encoder or layer this base lacks, or whose (out, in) differs."""
        layers = self.encoder_targets().get(component)
        if layers is None:
            raise BaseMismatchError(
                f"the patch changes {component}, a CLIP text encoder this base does not have "
                f"(its CLIP encoders: {', '.join(self.encoder_targets()) or 'none'})"
            )
        if module not in layers:
            raise BaseMismatchError(
                f"patch module {component}.{module} does not exist in this base's {component}"
            )
        layer = layers[module]
        if (layer.out_features, layer.in_features) != shape:
            raise BaseMismatchError(
                f"shape mismatch at {component}.{module}: patch delta is {shape[0]}x{shape[1]}, the layer is "
                f"{layer.out_features}x{layer.in_features}; the patch was made for another text encoder"
            )

    def modules(self) -> list[nn.Module]:
        """The denoiser and the CLIP text encoders: every module an adapter may sit on."""
        return [self.denoiser, *(getattr(self.pipe, c) for c in self.encoder_targets())]

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    # diffusers' own LoRA verbs
    def adapter_names(self) -> list[str]:
        return list(getattr(self.denoiser, "peft_config", None) or {})

    def active_adapters(self) -> list[str]:
        if not self.adapter_names():
            return []
        return list(self.pipe.get_active_adapters())

    def load_adapter(self, state_dict: dict[str, torch.Tensor], name: str, metadata: Any = None) -> None:
        """``<component>.<module>.lora_A|B.weight`` factors as adapter ``name``, with the patch's LoraConfig
        (``metadata``, not one guessed from shapes); layers made on the meta device (no global RNG draw). Factors
        of a text encoder (``text_encoder.<module>...``) go onto it, through diffusers' own text-encoder loader."""
        self.denoiser.load_lora_adapter(
            state_dict, prefix=self.component, adapter_name=name, metadata=metadata, low_cpu_mem_usage=True
        )
        for component in encoders.COMPONENTS:
            if any(k.startswith(f"{component}.") for k in state_dict):
                type(self.pipe).load_lora_into_text_encoder(
                    state_dict,
                    network_alphas=None,
                    text_encoder=getattr(self.pipe, component),
                    prefix=component,
                    adapter_name=name,
                    _pipeline=self.pipe,
                    low_cpu_mem_usage=True,
                    metadata=metadata,
                )

    def load_lora_file(self, path: str, name: str) -> None:
        """A third-party LoRA file (diffusers or kohya keys), through diffusers' own loader."""
        try:
            self.pipe.load_lora_weights(path, adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise FmnPatchError(
                f"cannot load LoRA file {path}: {str(e).splitlines()[0]}; give a diffusers or kohya LoRA "
                ".safetensors file made for this base"
            ) from e

    def set_adapters(self, names: Sequence[str], weights: Sequence[float]) -> None:
        self.pipe.set_adapters(list(names), adapter_weights=list(weights))

    def activate(self, names: Sequence[str]) -> None:
        """Make exactly ``names`` active, leaving every adapter's weight as it is."""
        if names:
            self.denoiser.set_adapter(list(names))  # type: ignore[operator]
            for encoder in self.modules()[1:]:
                for module in encoder.modules():
                    if isinstance(module, BaseTunerLayer):
                        module.set_adapter(list(names))

    def delete_adapters(self, names: Sequence[str]) -> None:
        """Delete adapters; with none left the peft wrappers go too (the original modules come back)."""
        if names:
            self.pipe.delete_adapters(list(names))
        if not self.adapter_names():
            self.pipe.unload_lora_weights()

    def fuse_adapters(self, names: Sequence[str]) -> None:
        """Fold the named adapters (at their set weights) into the base weights; a NaN/inf sum: ValueError."""
        components = [self.component, *self.encoder_targets()]
        self.pipe.fuse_lora(components=components, adapter_names=list(names), safe_fusing=True)
