"""Train the toy pipeline: `python -m fmn_patch.toy.train [--out DIR] [--unet-steps N] ...`.

Deterministic for a given seed and thread count. Phases: render the world, train the VAE (MSE + small KL),
encode every image once, then train the UNet jointly with the text encoder (noise-prediction MSE, 10% empty
captions for classifier-free guidance, EMA of both), and save the EMA weights as a StableDiffusionPipeline
(safetensors) plus `training.json` (config, losses, timings) beside it.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from transformers import CLIPTokenizer

from fmn_patch.errors import FmnPatchError
from fmn_patch.toy import checkpoint, world, world_v2
from fmn_patch.toy import model as toy_model
from fmn_patch.toy.options import parse_config
from fmn_patch.toy.paths import toy_pipeline_path
from fmn_patch.toy.vocab import build_tokenizer

#: The toy worlds a model can be trained on, by name.
WORLDS = {"v1": world, "v2": world_v2}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained toy model."""

    out: Path = field(default_factory=toy_pipeline_path)  # where the pipeline is saved
    seed: int = 0
    images: int = 50_000  # rendered training images
    vae_steps: int = 500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 3500
    unet_batch: int = 64
    lr: float = 1e-3  # UNet and text encoder
    warmup: int = 200
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    weight_decay: float = 1e-2
    ema: float = 0.999
    caption_dropout: float = 0.1  # share of empty captions, for classifier-free guidance
    save_every: int = 1000  # also save a checkpoint every this many UNet steps
    stop_at: int = 0  # > 0: stop after this many UNet steps, keeping the LR schedule of unet_steps
    max_minutes: float = 0.0  # > 0: stop the UNet phase after this long (breaks determinism)
    threads: int = 1  # one thread: on a shared 2-core machine two threads ran 2.7x slower per step
    # the world it learns: "v1" (the committed toy) or "v2" (ConceptBench-toy v2, in progress)
    world: str = "v1"
    resume: bool = False  # continue from the state written with the last checkpoint, bit for bit
    state: Path | None = None  # where that state goes (~5x the model); None: a cache folder

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"world {self.world!r} is not a toy world; choose one of {', '.join(WORLDS)}")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.unet_steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(vae: AutoencoderKL, x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> list[float]:
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


@torch.no_grad()
def encode_all(vae: AutoencoderKL, x: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image's latent."""
    means, stds = [], []
    for i in range(0, len(x), batch):
        dist = vae.encode(x[i : i + batch]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    return torch.tensor(ids.input_ids)


class Ema:
    """Exponential moving average of parameters, started from their initial values.

    `copy_to` writes the bias-corrected averages, (shadow - decay**n * initial) / (1 - decay**n), as Adam corrects
    its moments: without it, decay 0.999 leaves 0.999**n of the random initialisation in the weights (37% after
    1,000 steps, 3% after 3,500).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float) -> None:
        self.params = list(params)
        self.initial = [p.detach().clone() for p in self.params]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach(), 1 - self.decay)
        self.steps += 1

    @torch.no_grad()
    def copy_to(self) -> None:
        d = self.decay**self.steps
        for s, i, p in zip(self.shadow, self.initial, self.params, strict=True):
            p.copy_((s - d * i) / (1 - d) if self.steps else s)


def take_step(
    loss: torch.Tensor, opt: torch.optim.Optimizer, params: list, ema: Ema, losses: list[float]
) -> None:
    """One optimiser step of a toy trainer: backward, gradients clipped to norm 1, the step, the EMA, the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    ema.update()
    losses.append(loss.item())


def log_step(name: str, step: int, steps: int, losses: list[float], lr: float, elapsed: float) -> None:
    """The progress line every 50 steps and at the last: mean loss of the last 50, rate and time left."""
    if step % 50 == 0 or step == steps - 1:
        rate = elapsed / (step + 1)
        log(
            f"{name} step {step:5d}/{steps}  loss {np.mean(losses[-50:]):.4f}  "
            f"lr {lr:.2e}  {rate:.2f} s/step  eta {rate * (steps - step) / 60:.1f} min"
        )


def save(pipe_parts: dict, ema: Ema, out: Path, record: dict) -> None:
    """Save the EMA weights as a pipeline without disturbing the training weights."""
    live = [p.detach().clone() for p in ema.params]
    ema.copy_to()
    pipe = toy_model.assemble(**pipe_parts)
    pipe.save_pretrained(out, safe_serialization=True)
    with torch.no_grad():
        for p, v in zip(ema.params, live, strict=True):
            p.copy_(v)
    (out / "training.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    log(f"saved {out}")


def train(cfg: TrainConfig, on_vae: Callable[[Path], None] | None = None) -> dict:
    """Run every phase; return the training record (also written to `out/training.json`).

    `on_vae(path)` is called once the trained VAE is saved at `path`, before the UNet phase: the judge trains on
    its reconstructions, so `fmn_patch.toy.build` starts it there, on the other core.
    """
    state = checkpoint.state_dir(cfg.out, cfg.state, "toy")
    done = checkpoint.resumable_record(cfg, cfg.out, state) if cfg.resume else None  # checked before any work
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    mcfg = toy_model.ModelConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp), WORLDS[cfg.world].caption_words())
    images, labels = WORLDS[cfg.world].dataset(cfg.images, cfg.seed)
    x = to_tensor(images)
    ids = tokenize(tokenizer, [s.caption for s in labels])
    empty = tokenize(tokenizer, [""])[0]
    record: dict = {
        "config": asdict(cfg),
        "model": asdict(mcfg),
        "timings_s": {"render": time.perf_counter() - t0},
    }
    log(f"rendered {cfg.images} images in {record['timings_s']['render']:.0f} s")

    t1 = time.perf_counter()
    if done is None:
        vae = toy_model.build_vae(mcfg)
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
    else:  # the VAE was trained and saved before the first checkpoint: reload it, re-encode (deterministic)
        vae = AutoencoderKL.from_pretrained(cfg.out / "vae")
        vae.requires_grad_(False)
        mean, std = encode_all(vae, x)
        scaling = float(done["vae"]["scaling_factor"])
        record["timings_s"]["vae"] = done["timings_s"]["vae"]
        record["vae"] = done["vae"]

    t2 = time.perf_counter()
    text_encoder = toy_model.build_text_encoder(mcfg, tokenizer)
    unet = toy_model.build_unet(mcfg)
    scheduler = toy_model.build_train_scheduler(mcfg)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = Ema(params, cfg.ema)
    parts = {"cfg": mcfg, "tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "unet": unet}
    losses: list[float] = []
    unet.train()
    text_encoder.train()
    first = 0
    if done is not None:
        first, losses = checkpoint.load_state(state, params, opt, ema, gen)
        t2 -= done["timings_s"].get("unet", 0.0)  # the time already spent counts
        log(f"resuming after step {first} of {cfg.unet_steps}")
    for step in range(first, cfg.unet_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = torch.randint(len(x), (cfg.unet_batch,), generator=gen)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scaling
        tokens = ids[idx].clone()
        drop = torch.rand(cfg.unet_batch, generator=gen) < cfg.caption_dropout
        tokens[drop] = empty
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(mcfg.train_timesteps, (cfg.unet_batch,), generator=gen)
        noisy = scheduler.add_noise(z0, noise, t)
        context = text_encoder(tokens)[0]  # (B, T, D)
        take_step(F.mse_loss(unet(noisy, t, context).sample, noise), opt, params, ema, losses)
        elapsed = time.perf_counter() - t2
        log_step("unet", step, cfg.unet_steps, losses, lr_at(step, cfg), elapsed)
        stop = (cfg.max_minutes > 0 and elapsed > cfg.max_minutes * 60) or step + 1 == cfg.stop_at
        last = stop or step == cfg.unet_steps - 1
        if (step + 1) % cfg.save_every == 0 or last:
            record["timings_s"]["unet"] = elapsed
            record["timings_s"]["total"] = time.perf_counter() - t0
            record["unet"] = {
                "steps_done": step + 1,
                "stopped_early": stop and step < cfg.unet_steps - 1,
                "final_loss": float(np.mean(losses[-200:])),
                "loss_every_100": [float(np.mean(losses[i : i + 100])) for i in range(0, len(losses), 100)],
            }
            save(parts, ema, cfg.out, record)
            checkpoint.save_state(state, step + 1, params, opt, ema, gen, losses)
        if stop:
            log(f"stopping after {step + 1} of {cfg.unet_steps} scheduled steps (--stop-at / --max-minutes)")
            break
    return record


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return parse_config(TrainConfig, argv, "python -m fmn_patch.toy.train", __doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> None:
    try:
        record = train(parse_args(argv))
    except FmnPatchError as e:  # bad input: one line and exit 2, as at the fmnpatch CLI
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    log(f"done in {record['timings_s']['total'] / 60:.1f} min, final loss {record['unet']['final_loss']:.4f}")


if __name__ == "__main__":
    main()
