"""What the MMDiT families (SD3/3.5 and Flux) share: text-stream key/value targets on the ``transformer``,
a joint text sequence made of encoder parts, rectified-flow denoising, and per-target preservation inputs.

Targets: the text stream's ``attn.add_k_proj`` / ``add_v_proj`` of every joint block (SD3: every block, the
``context_pre_only`` last one included, whose text output is discarded but whose keys and values are still read;
Flux: the double-stream blocks). Their input is the text stream as it stands at that block: from block 1 on it
has attended over the image, and at every block it is modulated by the timestep and the pooled text. Unlike a
UNet's cross-attention, whose keys and values read the text encoder's output alone, the inputs to keep are
therefore recorded from denoiser forwards (``preserve_inputs``).

Denoising: rectified flow, x_t = (1 - s) x0 + s noise, prediction ``noise - x0``. An integer timestep t in
[0, N) stands for s = shift((t + 1) / N) with the scheduler's own shift (static for SD3, resolution-dependent for
Flux), the noise levels the sampler visits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Final, cast

import torch
from torch import nn

from ..errors import BaseMismatchError, FmnPatchError
from ..format.targets import TargetKind, register_targets
from .adapters import Adapters
from .family import Family
from .images import Images
from .joint import JointPlacement, recorded_inputs
from .noise import Noise
from .text import Text
from .tokens import place

PROJECTIONS: Final = ("add_k_proj", "add_v_proj")
#: SD3's joint blocks and Flux's double-stream blocks share these names (Flux's single-stream blocks do not match).
MMDIT_TARGETS: Final = register_targets(
    TargetKind(
        component="transformer",
        regex=r"transformer_blocks\.\d+\.attn\.(add_k_proj|add_v_proj)",
        projections=PROJECTIONS,
        description="MMDiT text-stream attn.add_k_proj/add_v_proj (SD3 joint blocks, Flux double-stream blocks)",
    )
)
#: Rows of recorded text-stream inputs kept per target for the preservation term (a seeded subsample beyond it).
PRESERVE_ROWS = 65_536
#: Forward passes per preserve prompt when recording the text stream's inputs (timesteps and images drawn).
PRESERVE_DRAWS = 2

EDIT_REFUSAL = (
    "the closed-form edit is not offered for {family} models: their text keys/values read the text stream, "
    "which depends on the image and the timestep from block 1 on (exact only at block 0, per timestep); "
    "use `fmnpatch train` instead"
)
#: On toy-sd3 every adversarial-round variant tried (bench/mmdit_robust.py) let Concept Inversion back in more often
#: than the plain patch (BENCHMARKS.md, "Adversarial rounds on the toy MMDiT"). The attack's token brings the concept
#: through the pooled text embedding, which no key/value patch touches.
ROBUST_REFUSAL = (
    "--robust is not offered for {family} models: on the toy MMDiT its adversarial rounds let Concept Inversion "
    "back in more often than a plain patch does (BENCHMARKS.md, bench/mmdit_robust.py); train without --robust"
)


class MMDiTAdapters(Adapters):
    """LoRA on the transformer's text-side K/V."""

    component = "transformer"
    targets_kind = MMDIT_TARGETS

    def targets(self) -> dict[str, nn.Linear]:
        found: dict[str, nn.Linear] = {}
        for name, module in self.denoiser.named_modules():
            if not self.is_target(name):
                continue
            base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
            if not isinstance(base, nn.Linear):
                raise BaseMismatchError(f"{name} is a {type(base).__name__}, not a Linear layer")
            found[name] = base
        if not found:
            raise BaseMismatchError(
                f"no text-stream key/value projections ({self.targets_kind.description}) found in "
                f"{type(self.denoiser).__name__}"
            )
        return found

    def attention_layers(self) -> list[str]:
        """The attention modules whose text keys are targets (``...attn``), in model order."""
        return list(dict.fromkeys(n.rsplit(".", 1)[0] for n in self.targets()))


class MMDiTText(Text):
    """A joint text sequence made of encoder parts (SD3: CLIP then T5; Flux: T5 alone)."""

    #: Sampler sequence cap of the pipeline's ``max_sequence_length`` (SD3: 256, Flux: 512).
    sequence_cap: ClassVar[int]

    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer

    @property
    def t5_tokenizer(self) -> Any:
        """The T5 tokenizer (SD3: ``tokenizer_3``, Flux: ``tokenizer_2``)."""
        raise NotImplementedError

    @property
    def t5_length(self) -> int:
        """The T5 part's length, as this package always samples: the pipeline's default, or the tokenizer's own
        maximum where that is shorter (the toy MMDiT's 16)."""
        tokenizer = self.t5_tokenizer
        limit = (
            int(getattr(tokenizer, "model_max_length", self.sequence_cap)) if tokenizer else self.sequence_cap
        )
        return min(self.sequence_cap, limit)

    def parts(self) -> list[tuple[int, Any, int]]:
        """(offset, tokenizer, length) of each text part of the joint sequence that tokens are placed in."""
        raise NotImplementedError

    @property
    def max_length(self) -> int:
        """Length of the joint text sequence (the width of a concept mask)."""
        raise NotImplementedError

    def place(self, prompt: str, concept: str) -> JointPlacement:  # type: ignore[override]
        """The concept in every part: CLIP's (causal: the positions after it carry it too) and T5's."""
        return JointPlacement(
            prompt,
            tuple((off, place(tok, prompt, concept, max_length=n)) for off, tok, n in self.parts()),
        )

    def text_states(self) -> Any:
        raise FmnPatchError(EDIT_REFUSAL.format(family=self.family.name))

    def text_encoders(self) -> list[nn.Module]:
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [m for m in (getattr(self.pipe, n, None) for n in names) if m is not None]

    def require_one_encoder(self, what: str) -> None:
        return None  # learned tokens go into every text encoder (``tokens_mmdit``)


class MMDiTNoise(Noise):
    """Rectified flow at the scheduler's shifted noise levels; preservation inputs recorded from forwards."""

    def _mu(self, latents: torch.Tensor) -> float | None:
        """The resolution-dependent shift of a dynamic-shifting scheduler (Flux), None for a static one."""
        return None

    def sigma(self, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Noise level s in (0, 1] of integer timesteps t (B,), as the scheduler's training table shifts it."""
        config = self.pipe.scheduler.config
        s = (t.double() + 1) / config.num_train_timesteps
        mu = self._mu(latents)
        if mu is not None:
            s = math.exp(mu) / (math.exp(mu) + (1 / s - 1))
        else:
            shift = float(config.shift)
            s = shift * s / (1 + (shift - 1) * s)
        return s.float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.sigma(t, x0).to(x0).view(-1, *[1] * (x0.ndim - 1))
        return (1 - s) * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - x0

    @torch.no_grad()
    def preserve_inputs(
        self, prompts: Sequence[str], latents: torch.Tensor | None = None, *, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """{target: (M, in)} the text-stream states each target reads for ``prompts``, recorded from denoiser
        forwards: each prompt ``PRESERVE_DRAWS`` times, at a uniform timestep, on a reference latent (or, without
        latents, pure noise) noised to it. Rows beyond ``PRESERVE_ROWS`` are subsampled (seeded)."""
        adapters = self.family.adapters
        gen = torch.Generator().manual_seed(seed)
        cond = self.family.text.encode(prompts).repeat_interleave(PRESERVE_DRAWS)
        n = len(cond)
        shape = latents.shape[1:] if latents is not None else mmdit_images(self.family).latent_shape()
        noise = torch.randn((n, *shape), generator=gen)
        x0 = latents[torch.randint(len(latents), (n,), generator=gen)] if latents is not None else noise
        t = torch.randint(0, self.num_train_timesteps, (n,), generator=gen)
        blocks: dict[str, list[str]] = {}  # add_k_proj and add_v_proj of one attention read the same states
        for name in adapters.targets():
            blocks.setdefault(name.rsplit(".", 1)[0], []).append(name)
        first = {names[0]: adapters.targets()[names[0]] for names in blocks.values()}
        with recorded_inputs(first) as record:
            for i in range(0, n, 64):
                sl = slice(i, i + 64)
                x_t = self.add_noise(x0[sl], noise[sl], t[sl]).to(adapters.device, adapters.dtype)
                self.denoise(x_t, t[sl].to(adapters.device), cond.select(torch.arange(n)[sl]))
        out: dict[str, torch.Tensor] = {}
        for names in blocks.values():
            rows = torch.cat(record[names[0]]).flatten(0, 1)  # (n * T, in)
            if len(rows) > PRESERVE_ROWS:
                rows = rows[torch.randperm(len(rows), generator=gen)[:PRESERVE_ROWS]]
            rows = rows.float().cpu()
            out.update(dict.fromkeys(names, rows))
        return out


class MMDiTImages(Images):
    """Sampling at the default size with the T5 length this package samples with."""

    def sampler_kwargs(self) -> dict[str, Any]:
        size = self.pixel_size()
        return {"height": size, "width": size, "max_sequence_length": mmdit_text(self.family).t5_length}

    def latent_shape(self) -> tuple[int, ...]:
        """(C, h, w) of a latent at the default image size."""
        raise NotImplementedError


class MMDiTFamily(Family):
    """SD3-style and Flux-style pipelines: LoRA on the transformer's text-side K/V."""

    #: The diffusers class of its transformer, as ``model_index.json`` names it.
    transformer_class: ClassVar[str]

    @classmethod
    def claims(cls, pipe: Any) -> bool:
        transformer = getattr(pipe, "transformer", None)
        return type(transformer).__name__ == cls.transformer_class

    @classmethod
    def named_in_index(cls, model_index: dict[str, Any]) -> bool:
        entry = model_index.get("transformer")
        return isinstance(entry, list) and len(entry) == 2 and entry[1] == cls.transformer_class

    @classmethod
    def require_closed_form(cls) -> None:
        raise FmnPatchError(EDIT_REFUSAL.format(family=cls.name))

    @classmethod
    def require_robust(cls) -> None:
        raise FmnPatchError(ROBUST_REFUSAL.format(family=cls.name))


def mmdit_text(family: Family) -> MMDiTText:
    """An MMDiT family's text role, typed as one (its T5 part and joint layout)."""
    return cast(MMDiTText, family.text)


def mmdit_images(family: Family) -> MMDiTImages:
    """An MMDiT family's images role, typed as one (its latent shape)."""
    return cast(MMDiTImages, family.images)


def mmdit_adapters(family: Family) -> MMDiTAdapters:
    """An MMDiT family's adapters role, typed as one (its attention layers)."""
    return cast(MMDiTAdapters, family.adapters)
