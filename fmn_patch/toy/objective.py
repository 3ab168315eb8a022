"""What a toy denoiser learns to predict: its parametrisation, as noised input, timestep and target.

Each objective draws its noise level from the loop's generator, after the batch's latents, caption dropout and
noise (that order is part of the trained bits), and leaves the loss, `mse(prediction, target)`, to the loop.

- `EpsilonDdpm`: DDPM's noise prediction (Ho et al., 2020): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise at an
  integer t drawn uniformly; target the noise. The UNet toy's, as Stable Diffusion 1.x.
- `RectifiedFlow`: rectified flow (Esser et al., 2024, "Scaling Rectified Flow Transformers"): x_s = (1 - s) x0 +
  s noise with s logit-normal(0, 1), time-shifted; timestep 1000 s; target noise - x0. The MMDiT toy's, as SD3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from diffusers import DDPMScheduler


class Objective(Protocol):
    def noised(
        self, x0: torch.Tensor, noise: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, the timestep the denoiser is given, the target of its prediction) for clean latents x0."""
        ...


@dataclass(frozen=True)
class EpsilonDdpm:
    scheduler: DDPMScheduler  # its betas; its timesteps are drawn from range(timesteps)
    timesteps: int

    def noised(
        self, x0: torch.Tensor, noise: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = torch.randint(self.timesteps, (len(x0),), generator=gen)  # (B,)
        return self.scheduler.add_noise(x0, noise, t), t, noise  # type: ignore[arg-type]


@dataclass(frozen=True)
class RectifiedFlow:
    shift: float  # time shift: s -> shift s / (1 + (shift - 1) s); 1 leaves s as drawn

    def noised(
        self, x0: torch.Tensor, noise: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = torch.sigmoid(torch.randn(len(x0), generator=gen))  # (B,), logit-normal(0, 1)
        s = self.shift * s / (1 + (self.shift - 1) * s)
        x_s = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise  # (B, C, h, w)
        return x_s, s * 1000, noise - x0
