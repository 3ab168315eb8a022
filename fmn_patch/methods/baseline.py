"""The original Forget-Me-Not recipe, reproduced faithfully as a named baseline, so every comparison with FMN is
measured side by side on the same model instead of quoted.

As the released code behaves (see shared notes, method.md): prompts "a photo of {x}" (objects, identities) or
"a photo in the style of {x}" (styles); ~10 reference images, VAE-encoded, noised at t ~ U[0, 1000); loss = the
unsquared L2 norm of all cross-attention probabilities at the concept's token positions, concatenated over layers,
heads and pixels; no denoising or preservation term; AdamW lr 2e-6, 35 steps, batch 1; trainable set: the whole
UNet (default) or every parameter of the attention layers that hold the targets (``attn2``). Its bugs are not
reproduced: gradient clipping really clips, the position mask is right for any batch size, nothing is hard-coded.

The result is not a patch (the whole denoiser may change): the pipeline is trained in place. Its ``requires_grad``
flags and train/eval mode are restored after.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..errors import FmnPatchError
from ..families.base import Base
from ..families.grads import frozen
from ..families.references import folder_latents, generated_latents
from ..families.threads import sized_threads
from .loop import LoopConfig, optimise
from .losses import fmn_loss

TEMPLATES = {"style": "a photo in the style of {}", "object": "a photo of {}", "identity": "a photo of {}"}


@dataclass
class FMNConfig:
    """The released recipe's hyper-parameters."""

    steps: int = 35
    lr: float = 2e-6
    batch_size: int = 1
    trainable: Literal["unet", "attn2"] = "unet"
    use_eos: bool = False  # the option to also steer attention away from the EOS position
    num_images: int = 10  # reference images of each concept
    max_grad_norm: float = 1.0
    seed: int = 0
    image_steps: int = 20
    image_guidance: float = 5.0


@dataclass
class FMNReport:
    seconds: float
    trainable_parameters: int
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimisation step


@sized_threads
def train_fmn_baseline(
    base: Base,
    concepts: Sequence[tuple[str, str]],
    config: FMNConfig | None = None,
    *,
    images: str | None = None,
    progress: bool = True,
) -> FMNReport:
    """Train ``base``'s denoiser in place with the FMN recipe on ``concepts`` given as (name, category) pairs.

    ``images``: a folder of reference images (one concept only); default: ``num_images`` drawn by the base.
    """
    family = base.family
    config = config or FMNConfig()
    started = time.perf_counter()
    denoiser = family.adapters.denoiser
    prompts = [TEMPLATES.get(category, TEMPLATES["object"]).format(name) for name, category in concepts]
    placements = [family.text.place(p, name) for p, (name, _) in zip(prompts, concepts, strict=True)]
    masks = torch.zeros(len(prompts), family.text.max_length)
    for i, pl in enumerate(placements):
        masks[i, list(pl.concept) + ([pl.eos] if config.use_eos else [])] = 1.0
    if images is not None:
        if len(prompts) != 1:
            raise FmnPatchError("images= gives pictures of one concept; train one concept at a time with it")
        latents = folder_latents(base, images)
        owner = torch.zeros(len(latents), dtype=torch.long)
    else:
        seeds = list(range(config.num_images))
        latents = generated_latents(
            base, prompts, seeds, steps=config.image_steps, guidance=config.image_guidance
        )
        owner = torch.arange(len(prompts)).repeat_interleave(len(seeds))
    cond = family.text.encode(prompts)
    attention = tuple(
        f"{n.rsplit('.', 1)[0]}." for n in family.adapters.targets()
    )  # the targets' attention layers
    maps: list[torch.Tensor] = []

    def sink(_name: str, probs: torch.Tensor) -> None:
        maps.append(probs)

    def step(gen: torch.Generator) -> dict[str, torch.Tensor]:
        pick = torch.randint(len(latents), (config.batch_size,), generator=gen)
        idx = owner[pick]
        x0 = latents[pick].to(family.adapters.device, family.adapters.dtype)
        t = torch.randint(0, family.noise.num_train_timesteps, (config.batch_size,), generator=gen).to(
            family.adapters.device
        )
        x_t = family.noise.add_noise(x0, torch.randn(x0.shape, generator=gen).to(x0), t)
        maps.clear()
        with family.noise.capture_attention(sink):
            family.noise.denoise(x_t, t, cond.select(idx))  # the prediction itself is not used by FMN's loss
        return {"fmn": fmn_loss(maps, masks[idx].to(x_t.device))}

    was_training = denoiser.training
    with frozen(denoiser):
        params = [
            p for n, p in denoiser.named_parameters() if config.trainable == "unet" or n.startswith(attention)
        ]
        for p in params:
            p.requires_grad_(True)
        loop = LoopConfig(
            steps=config.steps,
            lr=config.lr,
            seed=config.seed,
            max_grad_norm=config.max_grad_norm,
            weight_decay=0.01,
            desc="training (FMN baseline)",
            hint="lower lr",  # AdamW's default decay, as released
        )
        denoiser.train()
        try:
            # the released code's clip was a no-op; here it clips
            result = optimise(params, step, loop, progress=progress)
        finally:
            denoiser.train(was_training)
    report = FMNReport(
        seconds=time.perf_counter() - started,
        trainable_parameters=sum(p.numel() for p in params),
        losses=result.losses,
        step_seconds=result.step_seconds,
    )
    return report
