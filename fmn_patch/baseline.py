"""The original Forget-Me-Not recipe, reproduced faithfully as a named baseline, so every comparison with FMN is
measured side by side on the same model instead of quoted.

As the released code behaves (see shared notes, method.md): prompts "a photo of {x}" (objects, identities) or
"a photo in the style of {x}" (styles); ~10 reference images, VAE-encoded, noised at t ~ U[0, 1000); loss = the
unsquared L2 norm of all cross-attention probabilities at the concept's token positions, concatenated over layers,
heads and pixels; no denoising or preservation term; AdamW lr 2e-6, 35 steps, batch 1; trainable set: the whole
UNet (default) or every ``attn2`` parameter. Its bugs are not reproduced: gradient clipping really clips, the
position mask is right for any batch size, nothing is hard-coded.

The result is not a patch (the whole UNet may change): the pipeline is trained in place.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from .attention import capture_attention
from .encoding import encode
from .errors import FmnPatchError
from .loss import fmn_loss
from .references import encode_images, folder_images, generated_latents, pixel_size
from .targets import CROSS_ATTENTION
from .tokens import place

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


def train_fmn_baseline(
    pipe: Any,
    concepts: Sequence[tuple[str, str]],
    config: FMNConfig | None = None,
    *,
    images: str | None = None,
    progress: bool = True,
) -> FMNReport:
    """Train ``pipe``'s UNet in place with the FMN recipe on ``concepts`` given as (name, category) pairs.

    ``images``: a folder of reference images (one concept only); default: ``num_images`` drawn by the base.
    """
    config = config or FMNConfig()
    started = time.perf_counter()
    unet = pipe.unet
    prompts = [TEMPLATES.get(category, TEMPLATES["object"]).format(name) for name, category in concepts]
    placements = [place(pipe.tokenizer, p, name) for p, (name, _) in zip(prompts, concepts, strict=True)]
    masks = torch.zeros(len(prompts), pipe.tokenizer.model_max_length)
    for i, pl in enumerate(placements):
        masks[i, list(pl.concept) + ([pl.eos] if config.use_eos else [])] = 1.0
    if images is not None:
        if len(prompts) != 1:
            raise FmnPatchError("images= gives pictures of one concept; train one concept at a time with it")
        latents = encode_images(pipe, folder_images(images, pixel_size(pipe)))
        owner = torch.zeros(len(latents), dtype=torch.long)
    else:
        seeds = list(range(config.num_images))
        latents = generated_latents(
            pipe, prompts, seeds, steps=config.image_steps, guidance=config.image_guidance
        )
        owner = torch.arange(len(prompts)).repeat_interleave(len(seeds))
    cond = encode(pipe, prompts)

    unet.requires_grad_(False)
    params = [
        p
        for n, p in unet.named_parameters()
        if config.trainable == "unet" or f".{CROSS_ATTENTION}." in f".{n}"
    ]
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    num_t = int(pipe.scheduler.config.num_train_timesteps)
    report = FMNReport(seconds=0.0, trainable_parameters=sum(p.numel() for p in params))
    maps: list[torch.Tensor] = []

    def sink(_name: str, probs: torch.Tensor) -> None:
        maps.append(probs)

    unet.train()
    for step in tqdm(
        range(config.steps), desc="fmn-baseline", disable=not progress, file=sys.stderr, leave=False
    ):
        tick = time.perf_counter()
        pick = torch.randint(len(latents), (config.batch_size,), generator=gen)
        idx = owner[pick]
        x0 = latents[pick].to(unet.device, unet.dtype)
        t = torch.randint(0, num_t, (config.batch_size,), generator=gen).to(unet.device)
        x_t = pipe.scheduler.add_noise(x0, torch.randn(x0.shape, generator=gen).to(x0), t)
        maps.clear()
        with capture_attention(unet, sink):
            unet(x_t, t, **cond.select(idx).unet_kwargs())  # the prediction itself is not used by FMN's loss
        loss = fmn_loss(maps, masks[idx].to(x_t.device))
        if not torch.isfinite(loss):
            raise FmnPatchError(f"FMN baseline diverged at step {step} (loss {float(loss)}); lower lr")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)  # the released code's clip was a no-op
        optimiser.step()
        report.step_seconds.append(time.perf_counter() - tick)
        report.losses.append(loss.item())
    unet.eval()
    unet.requires_grad_(False)
    report.seconds = time.perf_counter() - started
    return report
