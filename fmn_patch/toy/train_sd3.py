"""Train the toy MMDiT (``toy-sd3``): `python -m fmn_patch.toy.train_sd3 [--out DIR] [--steps N] ...`.

Deterministic for a given seed and thread count. It renders the same world as the UNet toy (same seed, same
images), encodes it with the UNet toy's trained VAE (its weights are reused unchanged; an SD3-style
``shift_factor`` and ``scaling_factor`` are measured on the latents), then trains the transformer jointly with
its three text encoders in SD3's recipe: rectified flow (x_t = (1 - s) x0 + s noise, target noise - x0), s drawn
logit-normal(0, 1), 10% empty captions for classifier-free guidance, an EMA of the weights, which are what is
saved, as a StableDiffusion3Pipeline plus ``training.json`` beside it.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from fmn_patch.errors import FmnPatchError
from fmn_patch.toy import checkpoint, model_sd3
from fmn_patch.toy.options import parse_config
from fmn_patch.toy.paths import toy_pipeline_path, toy_sd3_pipeline_path
from fmn_patch.toy.train import Ema, encode_all, log, log_step, take_step, to_tensor, tokenize
from fmn_patch.toy.vocab import build_t5_tokenizer, build_tokenizer
from fmn_patch.toy.world import dataset


@dataclass(frozen=True)
class Sd3TrainConfig:
    """Everything that determines the trained toy MMDiT."""

    out: Path = field(default_factory=toy_sd3_pipeline_path)  # where the pipeline is saved
    vae: Path = field(default_factory=lambda: toy_pipeline_path() / "vae")  # the UNet toy's trained VAE
    seed: int = 0
    images: int = 50_000  # rendered training images (the UNet toy's, same seed)
    steps: int = 3500
    batch: int = 64
    lr: float = 1e-3  # transformer and text encoders
    warmup: int = 200
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    weight_decay: float = 1e-2
    ema: float = 0.999
    caption_dropout: float = 0.1  # share of empty captions, for classifier-free guidance
    save_every: int = 500  # also save a checkpoint every this many steps
    stop_at: int = 0  # > 0: stop after this many steps, keeping the LR schedule of `steps`
    threads: int = 1
    resume: bool = False  # continue from the state written with the last checkpoint, bit for bit
    state: Path | None = None  # where that state goes (~5x the model); None: a cache folder (state_dir)


def lr_at(step: int, cfg: Sd3TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def text_conditioning(
    encoders: tuple[Any, Any, Any], clip_ids: torch.Tensor, t5_ids: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """What StableDiffusion3Pipeline.encode_prompt computes, with autograd: the two CLIPs' penultimate states
    concatenated and zero-padded to the T5 width, then the T5 states, along the sequence; pooled: both CLIPs'."""
    one, two, t5 = encoders
    a, b = one(clip_ids, output_hidden_states=True), two(clip_ids, output_hidden_states=True)
    clip = torch.cat([a.hidden_states[-2], b.hidden_states[-2]], dim=-1)  # (B, 20, 2 * clip_hidden)
    clip = F.pad(clip, (0, width - clip.shape[-1]))  # (B, 20, t5_width)
    states = torch.cat([clip, t5(t5_ids)[0]], dim=-2)  # (B, 20 + 16, t5_width)
    return states, torch.cat([a.text_embeds, b.text_embeds], dim=-1)


def t5_tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    return torch.tensor(ids.input_ids)


def save(parts: dict, ema: Ema, out: Path, record: dict) -> None:
    """Save the EMA weights as a pipeline without disturbing the training weights."""
    live = [p.detach().clone() for p in ema.params]
    ema.copy_to()
    model_sd3.assemble(**parts).save_pretrained(out, safe_serialization=True)
    with torch.no_grad():
        for p, v in zip(ema.params, live, strict=True):
            p.copy_(v)
    (out / "training.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    log(f"saved {out}")


def train(cfg: Sd3TrainConfig) -> dict:
    """Run every phase; return the training record (also written to ``out/training.json``)."""
    state = checkpoint.state_dir(cfg.out, cfg.state, "toy-sd3")
    done = checkpoint.resumable_record(cfg, cfg.out, state) if cfg.resume else None  # checked before any work
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    mcfg = model_sd3.Sd3ModelConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp) / "clip")
        tokenizer_3 = build_t5_tokenizer(Path(tmp) / "t5")
    images, labels = dataset(cfg.images, cfg.seed)
    captions = [s.caption for s in labels]
    clip_ids, t5_ids = tokenize(tokenizer, captions), t5_tokenize(tokenizer_3, captions)
    empty_clip, empty_t5 = tokenize(tokenizer, [""])[0], t5_tokenize(tokenizer_3, [""])[0]
    record: dict = {
        "config": asdict(cfg),
        "model": asdict(mcfg),
        "timings_s": {"render": time.perf_counter() - t0},
    }
    log(f"rendered {cfg.images} images in {record['timings_s']['render']:.0f} s")

    t1 = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(cfg.vae)
    vae.requires_grad_(False)
    mean, std = encode_all(vae, to_tensor(images))
    sampled = mean + std * torch.randn(mean.shape, generator=gen)
    shift = float(sampled.mean())
    scaling = float(1.0 / (sampled - shift).std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scaling)
    record["timings_s"]["encode"] = time.perf_counter() - t1
    record["vae"] = {"from": str(cfg.vae), "shift_factor": shift, "scaling_factor": scaling}
    log(f"encoded in {record['timings_s']['encode']:.0f} s: shift {shift:.4f}, scale {scaling:.4f}")

    t2 = time.perf_counter()
    encoders = (
        model_sd3.build_clip(mcfg, tokenizer),
        model_sd3.build_clip(mcfg, tokenizer),
        model_sd3.build_t5(mcfg, len(tokenizer_3)),
    )
    transformer = model_sd3.build_transformer(mcfg)
    modules = [transformer, *encoders]
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = Ema(params, cfg.ema)
    parts = {
        "cfg": mcfg,
        "tokenizer": tokenizer,
        "tokenizer_3": tokenizer_3,
        "text_encoder": encoders[0],
        "text_encoder_2": encoders[1],
        "text_encoder_3": encoders[2],
        "vae": vae,
        "transformer": transformer,
    }
    losses: list[float] = []
    for m in modules:
        m.train()
    first = 0
    if done is not None:
        first, losses = checkpoint.load_state(state, params, opt, ema, gen)
        t2 -= done["timings_s"].get("transformer", 0.0)  # the time already spent counts
        log(f"resuming after step {first} of {cfg.steps}")
    for step in range(first, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = torch.randint(len(mean), (cfg.batch,), generator=gen)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen) - shift) * scaling
        clip, t5 = clip_ids[idx].clone(), t5_ids[idx].clone()
        drop = torch.rand(cfg.batch, generator=gen) < cfg.caption_dropout
        clip[drop], t5[drop] = empty_clip, empty_t5
        noise = torch.randn(x0.shape, generator=gen)
        s = torch.sigmoid(torch.randn(cfg.batch, generator=gen))  # logit-normal(0, 1)
        s = mcfg.shift * s / (1 + (mcfg.shift - 1) * s)
        x_t = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
        states, pooled = text_conditioning(encoders, clip, t5, mcfg.t5_width)
        pred = transformer(
            x_t, encoder_hidden_states=states, pooled_projections=pooled, timestep=s * 1000
        ).sample
        take_step(F.mse_loss(pred, noise - x0), opt, params, ema, losses)
        elapsed = time.perf_counter() - t2
        log_step("mmdit", step, cfg.steps, losses, lr_at(step, cfg), elapsed)
        stop = step + 1 == cfg.stop_at
        if (step + 1) % cfg.save_every == 0 or stop or step == cfg.steps - 1:
            record["timings_s"]["transformer"] = elapsed
            record["timings_s"]["total"] = time.perf_counter() - t0
            record["transformer"] = {
                "steps_done": step + 1,
                "stopped_early": stop and step < cfg.steps - 1,
                "final_loss": float(np.mean(losses[-200:])),
                "loss_every_100": [float(np.mean(losses[i : i + 100])) for i in range(0, len(losses), 100)],
            }
            save(parts, ema, cfg.out, record)
            checkpoint.save_state(state, step + 1, params, opt, ema, gen, losses)
        if stop:
            log(f"stopping after {step + 1} of {cfg.steps} scheduled steps (--stop-at)")
            break
    return record


def parse_args(argv: list[str] | None = None) -> Sd3TrainConfig:
    return parse_config(Sd3TrainConfig, argv, "python -m fmn_patch.toy.train_sd3", __doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> None:
    try:
        record = train(parse_args(argv))
    except FmnPatchError as e:  # bad input: one line and exit 2, as at the fmnpatch CLI
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    log(
        f"done in {record['timings_s']['total'] / 60:.1f} min, final loss {record['transformer']['final_loss']:.4f}"
    )


if __name__ == "__main__":
    main()
