"""The family protocol: the one seam between the package and a model architecture.

A ``Family`` wraps one loaded diffusers pipeline and answers, for its architecture, every question a method, an
attack, the evaluator or the stacker asks of the model: which modules a patch touches, how prompts become
conditioning, where a concept sits among the tokens, one denoising prediction, the attention of image queries to
text keys, kohya names, ModelSpec ids and the base hash. Nothing outside ``fmn_patch.families`` reaches into
``pipe.unet``, ``pipe.transformer``, tokenizers or attention processors.

A family is a subclass registered with ``register_family``. What is common to every diffusers LoRA pipeline (the
adapter verbs, sampling with the pipeline's own call) is implemented here."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import BaseMismatchError, FmnPatchError
from ..format.targets import TargetKind
from ..progress import phase
from .grads import frozen as frozen  # re-exported: importers of family keep their import
from .grads import kept_grads as kept_grads
from .stepping import step_callback, step_reporter
from .tokens import Placement

#: A sink for attention probabilities: (layer name, probs (B, heads, image tokens, text tokens)).
Sink = Callable[[str, torch.Tensor], None]


@dataclass
class Conditioning:
    """What the denoiser is conditioned on for N prompts: text states (N, T, D) and family-specific extras
    (pooled embeddings, size ids, ...) as (N, ...) tensors. Only the family that made it reads the extras."""

    states: torch.Tensor
    added: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.states.shape[0]

    def select(self, index: torch.Tensor) -> Conditioning:
        added = {k: v[index] for k, v in self.added.items()} if self.added else None
        return Conditioning(self.states[index], added)

    def repeat_interleave(self, n: int) -> Conditioning:
        return self.select(torch.arange(len(self)).repeat_interleave(n))

    def expand(self, n: int) -> Conditioning:
        """One prompt's conditioning broadcast to ``n`` (a view: gradients flow back to the one prompt)."""
        added = {k: v.expand(n, *v.shape[1:]) for k, v in self.added.items()} if self.added else None
        return Conditioning(self.states.expand(n, *self.states.shape[1:]), added)

    def cat(self, other: Conditioning) -> Conditioning:
        added = (
            {k: torch.cat([v, other.added[k]]) for k, v in self.added.items()}
            if self.added and other.added
            else None
        )
        return Conditioning(torch.cat([self.states, other.states]), added)


class Family(ABC):
    """One architecture family's answers about a loaded pipeline (``self.pipe``)."""

    name: ClassVar[str]  # registry name, e.g. "unet"
    component: ClassVar[str]  # the pipeline attribute LoRA sits on, and the patch-key prefix: "unet"
    targets_kind: ClassVar[TargetKind]  # what its patches may touch (registered with the file format)
    kohya_form: ClassVar[bool] = True  # False: no kohya export (its UIs read the native file)

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    # ---------------------------------------------------------------------------------------- recognition
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

    # ------------------------------------------------------------------------------------ what a patch touches
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

    def target_hash(self) -> str:
        """SHA-256 of the base weights a patch touches: name, shape and float32 bytes of each target, by name.

        Independent of the dtype the pipeline was loaded in: when the weights in memory are of lower precision than
        float32, they are hashed from the tensors in the denoiser's own safetensors files instead, once each is
        checked to be exactly what is in memory after casting (so a patch made on a float32 model fits the same
        files loaded in bfloat16 or float16, while a modified model, e.g. one with a patch fused in, still hashes
        as what it is)."""
        import hashlib

        weights = {name: layer.weight.detach().cpu() for name, layer in self.targets().items()}
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

        folder = Path(str(getattr(self.denoiser.config, "_name_or_path", "") or ""))
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
        digest.update(self.device.type.encode())
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
        return to_kohya(patch, names, cls.kohya_header(patch.info.architecture, patch.modules, **layout))

    @classmethod
    def kohya_header(cls, architecture: str, modules: Sequence[str] = (), **layout: int) -> dict[str, str]:
        """A kohya export's header keys: ``ss_base_model_version``, ``ss_v2``, the keys' implementation..."""
        return {"ss_base_model_version": cls.kohya_version(architecture)}

    # ----------------------------------------------------------------------------------------------- text
    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The tokenizer concepts are placed with (the first one where there are several)."""

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    @abstractmethod
    def encode(self, prompts: Sequence[str], batch_size: int = 64) -> Conditioning:
        """Conditioning for the denoiser, padded as the pipeline pads, without classifier-free duplication."""

    def text_encoders(self) -> list[nn.Module]:
        """The text encoder modules (frozen while tokens are learned)."""
        return []

    @abstractmethod
    def text_states(self) -> Any:
        """The text states the targets read, at each prompt's true length (``encoding.TextStates``)."""

    @classmethod
    def require_closed_form(cls) -> None:
        """Refuse (one line, with the reason) where the closed-form edit does not serve the family."""
        return None

    @classmethod
    def require_robust(cls) -> None:
        """Refuse (one line, with the reason) where adversarial rounds (``--robust``) do not serve the family."""
        return None

    def place(self, prompt: str, concept: str) -> Placement:
        """Where ``concept``'s tokens (and the positions after it) sit in ``prompt``."""
        from .tokens import place

        return place(self.tokenizer, prompt, concept, max_length=self.max_length)

    def concept_ids(self, words: str) -> tuple[int, ...]:
        from .tokens import concept_ids

        return concept_ids(self.tokenizer, words)

    def token_ids(self, text: str) -> tuple[int, ...]:
        """Token ids of ``text`` without special tokens."""
        return tuple(self.tokenizer(text, add_special_tokens=False).input_ids)

    def common_words(self, count: int) -> list[str]:
        """The tokenizer's ``count`` most frequent whole words (the edit preserves their keys/values)."""
        from .tokens import common_words

        return common_words(self.tokenizer, count)

    def word_tokens(self) -> dict[int, str]:
        """The tokens that are whole words, {id: word} (the prompt search picks from them)."""
        from .tokens import word_tokens

        return word_tokens(self.tokenizer)

    # textual inversion and prompt search: families with one text encoder
    def require_one_encoder(self, what: str) -> None:
        raise FmnPatchError(f"{what} is not available for the {self.name} family ({self.architecture()})")

    def token_table(self) -> torch.Tensor:
        """The input embedding table (V, d) of the text encoder."""
        self.require_one_encoder("textual inversion")
        raise AssertionError  # pragma: no cover

    def added_tokens(
        self, names: Sequence[str], init: torch.Tensor | None = None, *, sparse: bool = False
    ) -> contextlib.AbstractContextManager[torch.Tensor]:
        """Within the block the pipeline knows ``names`` as new tokens; yields their rows of the table. ``sparse``:
        where the yielded tensor is a whole grown table, its gradient holds only the rows a prompt used."""
        self.require_one_encoder("textual inversion")
        raise AssertionError  # pragma: no cover

    @property
    def expands_tokens(self) -> bool:
        """Whether the pipeline's own prompt conversion expands a multi-vector token (``<t>`` -> ``<t> <t>_1``)."""
        return False

    def encode_with_grad(self, prompts: Sequence[str]) -> Conditioning:
        """``encode`` with autograd through the text encoder (padded to the max length)."""
        self.require_one_encoder("textual inversion")
        raise AssertionError  # pragma: no cover

    # ------------------------------------------------------------------------------------------ denoising
    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for clean latents x0 (B, ...), noise and integer timesteps t (B,)."""

    @abstractmethod
    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What ``denoise`` predicts at x_t in the family's parametrisation (eps, v or flow)."""

    @abstractmethod
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """One prediction of the denoiser, in the same parametrisation as ``target``."""

    def preserve_inputs(
        self, prompts: Sequence[str], latents: torch.Tensor | None = None, *, seed: int = 0
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """What the targets read for prompts whose keys and values must not move: one (M, in) tensor for every
        target where they read the text encoder's output alone (a UNet's cross-attention: every token of every
        prompt, no denoiser pass), else {target: (M, in)} (families whose text stream also reads the image)."""
        return self.encode(prompts).states.flatten(0, 1)

    @abstractmethod
    def capture_attention(self, sink: Sink) -> contextlib.AbstractContextManager[list[str]]:
        """Within the block, every targeted attention layer hands its image-query to text-key probabilities
        (B, heads, image tokens, text tokens) to ``sink``; yields the captured layer names."""

    # ------------------------------------------------------------------------------------------- images
    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @abstractmethod
    def pixel_size(self) -> int:
        """The default image side in pixels."""

    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Latents (N, ...) of images (N, 3, H, W) in [-1, 1], in the denoiser's latent scale, float32 on CPU."""

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        steps: int,
        guidance: float,
        output: str = "pt",
        batch_size: int = 64,
        height: int | None = None,
        width: int | None = None,
        progress: bool = False,
        desc: str = "generating",
    ) -> Any:
        """One image per (prompt, seed), prompt-major, each from its own seeded generator, ``batch_size`` per
        pipeline call. ``output``: ``pt`` (N, 3, H, W) in [0, 1], ``latent`` (N, ...) or ``pil`` (a list).

        The same batch size gives the same images; another batch size may change them in the last float bits."""
        jobs = [(p, s) for p in prompts for s in seeds]
        parts: list[Any] = []
        size = {"height": height, "width": width}
        with phase(desc, len(jobs) * steps, "steps") if progress else contextlib.nullcontext() as bar:
            for i in range(0, len(jobs), batch_size):
                chunk = jobs[i : i + batch_size]
                on_step = step_reporter(bar, i, len(chunk), len(jobs))
                parts.append(
                    self.draw(chunk, steps=steps, guidance=guidance, output=output, on_step=on_step, **size)
                )
        if output == "pil":
            return [image for part in parts for image in part]
        return torch.cat(parts)

    def draw(
        self,
        pairs: Sequence[tuple[str, int]],
        *,
        steps: int,
        guidance: float,
        output: str = "pt",
        height: int | None = None,
        width: int | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> Any:
        """One pipeline call: an image per (prompt, seed) pair, each from its own seeded generator; ``on_step``
        is called after each sampler step."""
        if steps > self.num_train_timesteps:
            raise FmnPatchError(
                f"steps={steps} is more than this base's scheduler has timesteps ({self.num_train_timesteps}); "
                f"give --steps {self.num_train_timesteps} or fewer"
            )
        extra = self.sampler_kwargs()
        extra.update({k: v for k, v in (("height", height), ("width", width)) if v is not None})
        if on_step is not None:
            extra["callback_on_step_end"] = step_callback(on_step)
        out = self.pipe(
            [p for p, _ in pairs],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(s) for _, s in pairs],
            output_type=output,
            **extra,
        )
        images = out.images
        if output == "latent":
            images = self.unpack(images, extra.get("height"), extra.get("width"))
        return images if output == "pil" else images.float().cpu()

    def sampler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every pipeline call of this family gets (image size, text length)."""
        return {}

    def unpack(self, latents: torch.Tensor, height: int | None, width: int | None) -> torch.Tensor:
        """The sampler's latent output in the (N, C, h, w) layout ``encode_images`` gives."""
        return latents

    # ------------------------------------------------------------------------------------------ adapters
    # diffusers' own LoRA verbs, so that a patch applied here behaves exactly as one loaded by stock diffusers.
    def adapter_names(self) -> list[str]:
        return list(getattr(self.denoiser, "peft_config", None) or {})

    def active_adapters(self) -> list[str]:
        if not self.adapter_names():
            return []
        return list(self.pipe.get_active_adapters())

    def load_adapter(self, state_dict: dict[str, torch.Tensor], name: str, metadata: Any = None) -> None:
        """``<component>.<module>.lora_A|B.weight`` factors as adapter ``name``, with the patch's LoraConfig
        (``metadata``, not one guessed from shapes); layers made on the meta device (no global RNG draw)."""
        self.denoiser.load_lora_adapter(
            state_dict, prefix=self.component, adapter_name=name, metadata=metadata, low_cpu_mem_usage=True
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

    def delete_adapters(self, names: Sequence[str]) -> None:
        """Delete adapters; with none left the peft wrappers go too (the original modules come back)."""
        if names:
            self.pipe.delete_adapters(list(names))
        if not self.adapter_names():
            self.pipe.unload_lora_weights()

    def fuse_adapters(self, names: Sequence[str]) -> None:
        """Fold the named adapters (at their set weights) into the base weights; a NaN/inf sum: ValueError."""
        self.pipe.fuse_lora(components=[self.component], adapter_names=list(names), safe_fusing=True)

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
