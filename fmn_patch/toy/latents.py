"""Where a toy's training latents come from: a VAE trained first, with the model, or another toy's VAE reused.

Either way every rendered image is encoded once; the denoiser then trains on one posterior draw per image and
step, mapped to unit scale: z = (mean + std * noise - shift) * scaling (`Latents.sample`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from fmn_patch.toy.options import log


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def encode_all(vae: AutoencoderKL, x: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image's latent."""
    means, stds = [], []
    for i in range(0, len(x), batch):
        dist = vae.encode(x[i : i + batch]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_vae(vae: AutoencoderKL, x: torch.Tensor, cfg: Any, gen: torch.Generator) -> list[float]:
    """`cfg.vae_steps` of AdamW on reconstruction MSE + `cfg.kl_weight` KL; returns the MSE of every step."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=cfg.weight_decay)
    losses: list[float] = []
    vae.train()
    for step in range(cfg.vae_steps):
        batch = x[torch.randint(len(x), (cfg.vae_batch,), generator=gen)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        mse = F.mse_loss(recon, batch)
        loss = mse + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(mse.item())
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            recent = float(np.mean(losses[-100:]))
            psnr = 10 * math.log10(4 / max(recent, 1e-12))  # range [-1, 1] -> peak 2
            log(f"vae step {step:5d}/{cfg.vae_steps}  mse {recent:.5f}  psnr {psnr:.1f} dB")
    vae.eval()
    return losses


@dataclass(frozen=True)
class Latents:
    """Every training image's latent posterior, and the map of a draw to the denoiser's scale."""

    vae: AutoencoderKL  # frozen from here on; saved with the pipeline
    mean: torch.Tensor  # (N, C, h, w)
    std: torch.Tensor  # (N, C, h, w)
    shift: float
    scaling: float

    def sample(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One posterior draw for each image in `idx`, shifted and scaled: (B, C, h, w)."""
        mean, std = self.mean[idx], self.std[idx]
        return (mean + std * torch.randn(mean.shape, generator=gen) - self.shift) * self.scaling


class LatentSource(Protocol):
    def __call__(
        self,
        cfg: Any,
        sizes: Any,
        x: torch.Tensor,
        gen: torch.Generator,
        record: dict,
        done: dict | None,
        on_vae: Callable[[Path], None] | None,
    ) -> Latents:
        """Encode the images `x` (N, 3, H, W) for the run `cfg` with model sizes `sizes`, recording what it
        measured in `record` ("vae" and its time); `done` is the record being resumed, if any; `on_vae(path)` is
        called once a newly trained VAE is saved there."""
        ...


def _frozen_encoding(folder: Path, x: torch.Tensor) -> tuple[AutoencoderKL, torch.Tensor, torch.Tensor]:
    """A saved VAE, frozen, and the posterior mean and std of every image `x` (N, 3, H, W) in [-1, 1]."""
    vae = AutoencoderKL.from_pretrained(folder)
    vae.requires_grad_(False)
    mean, std = encode_all(vae, x)
    return vae, mean, std


@dataclass(frozen=True)
class TrainedVae:
    """The VAE trains first (`train_vae`, options `vae_*` and `kl_weight`) and is saved into the pipeline folder
    before the denoiser phase; its `scaling_factor` is measured on the latents (no shift, as SD 1.x). A resumed
    run reloads it from there and re-encodes (deterministic)."""

    build: Callable[[Any], AutoencoderKL]  # sizes -> a fresh VAE, initialised from the global RNG

    def __call__(
        self,
        cfg: Any,
        sizes: Any,
        x: torch.Tensor,
        gen: torch.Generator,
        record: dict,
        done: dict | None,
        on_vae: Callable[[Path], None] | None,
    ) -> Latents:
        t1 = time.perf_counter()
        if done is not None:  # the VAE was trained and saved before the first checkpoint
            vae, mean, std = _frozen_encoding(cfg.out / "vae", x)
            record["timings_s"]["vae"] = done["timings_s"]["vae"]
            record["vae"] = done["vae"]
            return Latents(vae, mean, std, 0.0, float(done["vae"]["scaling_factor"]))
        vae = self.build(sizes)
        vae_losses = train_vae(vae, x, cfg, gen)
        mean, std = encode_all(vae, x)
        latents = mean + std * torch.randn(mean.shape, generator=gen)
        scaling = float(1.0 / latents.std())
        vae.register_to_config(scaling_factor=scaling)
        vae.requires_grad_(False)
        vae.save_pretrained(
            cfg.out / "vae"
        )  # early, so that the judge can train on reconstructions meanwhile
        record["timings_s"]["vae"] = time.perf_counter() - t1
        record["vae"] = {"final_mse": float(np.mean(vae_losses[-100:])), "scaling_factor": scaling}
        record["vae"]["psnr_db"] = 10 * math.log10(4 / record["vae"]["final_mse"])
        log(f"vae done in {record['timings_s']['vae']:.0f} s, scaling factor {scaling:.3f}")
        if on_vae is not None:
            on_vae(cfg.out / "vae")
        return Latents(vae, mean, std, 0.0, scaling)


@dataclass(frozen=True)
class ReusedVae:
    """Another toy's trained VAE (option `vae`, a folder), its weights unchanged; an SD3-style `shift_factor` and
    `scaling_factor` are measured on the latents and written into its config."""

    def __call__(
        self,
        cfg: Any,
        sizes: Any,
        x: torch.Tensor,
        gen: torch.Generator,
        record: dict,
        done: dict | None,
        on_vae: Callable[[Path], None] | None,
    ) -> Latents:
        t1 = time.perf_counter()
        vae, mean, std = _frozen_encoding(cfg.vae, x)
        sampled = mean + std * torch.randn(mean.shape, generator=gen)
        shift = float(sampled.mean())
        scaling = float(1.0 / (sampled - shift).std())
        vae.register_to_config(shift_factor=shift, scaling_factor=scaling)
        record["timings_s"]["encode"] = time.perf_counter() - t1
        record["vae"] = {"from": str(cfg.vae), "shift_factor": shift, "scaling_factor": scaling}
        log(f"encoded in {record['timings_s']['encode']:.0f} s: shift {shift:.4f}, scale {scaling:.4f}")
        return Latents(vae, mean, std, shift, scaling)
