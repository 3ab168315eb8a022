"""Train a toy model: `python -m fmn_patch.toy.train [--family unet|sd3] [--out DIR] [--steps N] ...`.

One loop for every toy family (`fmn_patch.toy.family`), deterministic for a given seed and thread count. Phases:
render the world, get the latents (the UNet toy trains its VAE, MSE + small KL; the MMDiT reuses the UNet toy's),
encode every image once, then train the denoiser jointly with its text encoders in the family's parametrisation
(epsilon DDPM or rectified flow), with 10% empty captions for classifier-free guidance and an EMA of the weights,
which are what is saved: the family's pipeline (safetensors) plus `training.json` (config, losses, timings) beside
it. `--resume` continues from the last checkpoint bit for bit (`fmn_patch.toy.checkpoint`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fmn_patch import files
from fmn_patch.errors import FmnPatchError
from fmn_patch.toy import checkpoint, world
from fmn_patch.toy.config import Sd3TrainConfig, TrainConfig
from fmn_patch.toy.family import FAMILIES, UNET, family_of
from fmn_patch.toy.latents import to_tensor
from fmn_patch.toy.options import log, parse_config

__all__ = ["Ema", "Sd3TrainConfig", "TrainConfig", "main", "parse_args", "train"]


def lr_at(step: int, cfg: Any) -> float:
    """Linear warm-up over `cfg.warmup` steps, then cosine decay to `cfg.min_lr_ratio` of `cfg.lr`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """(N, the tokenizer's max length) ids, padded and truncated."""
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
    """One optimiser step: backward, gradients clipped to norm 1, the step, the EMA, the loss."""
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


def save(assemble: Callable[[], Any], ema: Ema, out: Path, record: dict) -> None:
    """Save the EMA weights as the pipeline `assemble()` makes, with its `training.json`, without disturbing the
    training weights. The folder is written aside and swapped in whole: Ctrl-C or a full disk midway leaves the
    previous checkpoint as it was."""

    def write(folder: Path) -> None:
        assemble().save_pretrained(folder, safe_serialization=True)
        (folder / "training.json").write_text(json.dumps(record, indent=2, default=str) + "\n")

    live = [p.detach().clone() for p in ema.params]
    ema.copy_to()
    try:
        files.atomic_folder(out, write, overwrite=True)
    finally:
        with torch.no_grad():
            for p, v in zip(ema.params, live, strict=True):
                p.copy_(v)
    log(f"saved {out}")


def train(cfg: TrainConfig | Sd3TrainConfig, on_vae: Callable[[Path], None] | None = None) -> dict:
    """Train the toy of `cfg`'s family; return the training record (also written to `out/training.json`).

    `on_vae(path)` is called once a newly trained VAE is saved at `path`, before the denoiser phase: the judge
    trains on its reconstructions, so `fmn_patch.toy.build` starts it there, on the other core.
    """
    family = family_of(cfg)
    state = checkpoint.state_dir(cfg.out, cfg.state, family.name)
    done = checkpoint.resumable_record(cfg, cfg.out, state) if cfg.resume else None  # checked before any work
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    sizes = family.sizes()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizers = family.tokenizers(Path(tmp), world.caption_words())
    images, labels = world.dataset(cfg.images, cfg.seed)
    captions = [s.caption for s in labels]
    ids = tuple(tokenize(t, captions) for t in tokenizers)  # (N, T) per tokenizer
    empty = tuple(tokenize(t, [""])[0] for t in tokenizers)
    record: dict = {
        "config": asdict(cfg),
        "model": asdict(sizes),
        "timings_s": {"render": time.perf_counter() - t0},
    }
    log(f"rendered {cfg.images} images in {record['timings_s']['render']:.0f} s")
    latents = family.latents(cfg, sizes, to_tensor(images), gen, record, done, on_vae)

    t2 = time.perf_counter()
    denoiser, encoders = family.trainable(sizes, tokenizers)
    objective = family.objective(sizes)
    modules = [denoiser, *encoders]
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = Ema(params, cfg.ema)
    assemble = partial(family.pipeline, sizes, tokenizers, encoders, latents.vae, denoiser)
    losses: list[float] = []
    for m in modules:
        m.train()
    first = 0
    if done is not None:
        first, losses = checkpoint.load_state(state, params, opt, ema, gen)
        t2 -= done["timings_s"].get(family.phase, 0.0)  # the time already spent counts
        log(f"resuming after step {first} of {cfg.steps}")
    for step in range(first, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = torch.randint(len(latents.mean), (cfg.batch,), generator=gen)
        x0 = latents.sample(idx, gen)  # (B, C, h, w)
        tokens = tuple(i[idx].clone() for i in ids)
        drop = torch.rand(cfg.batch, generator=gen) < cfg.caption_dropout
        for t, e in zip(tokens, empty, strict=True):
            t[drop] = e
        noise = torch.randn(x0.shape, generator=gen)
        x_t, timestep, target = objective.noised(x0, noise, gen)
        pred = family.predict(sizes, denoiser, encoders, x_t, timestep, tokens)
        take_step(F.mse_loss(pred, target), opt, params, ema, losses)
        elapsed = time.perf_counter() - t2
        log_step(family.label, step, cfg.steps, losses, lr_at(step, cfg), elapsed)
        stop = (cfg.max_minutes > 0 and elapsed > cfg.max_minutes * 60) or step + 1 == cfg.stop_at
        if (step + 1) % cfg.save_every == 0 or stop or step == cfg.steps - 1:
            record["timings_s"][family.phase] = elapsed
            record["timings_s"]["total"] = time.perf_counter() - t0
            record[family.phase] = {
                "steps_done": step + 1,
                "stopped_early": stop and step < cfg.steps - 1,
                "final_loss": float(np.mean(losses[-200:])),
                "loss_every_100": [float(np.mean(losses[i : i + 100])) for i in range(0, len(losses), 100)],
            }
            save(assemble, ema, cfg.out, record)
            checkpoint.save_state(state, step + 1, params, opt, ema, gen, losses)
        if stop:
            log(f"stopping after {step + 1} of {cfg.steps} scheduled steps (--stop-at / --max-minutes)")
            break
    return record


def parse_args(argv: list[str] | None = None) -> TrainConfig | Sd3TrainConfig:
    """`--family KEY` (default unet) picks the toy; every other option is a field of that family's config."""
    prog = "python -m fmn_patch.toy.train"
    first = argparse.ArgumentParser(prog=prog, add_help=False)
    first.add_argument("--family", choices=FAMILIES, default=UNET.key)
    known, rest = first.parse_known_args(argv)
    description = f"{__doc__.split(chr(10))[0]} These are the options of --family {known.family}."
    return parse_config(FAMILIES[known.family].config, rest, f"{prog} --family {known.family}", description)


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = parse_args(argv)
        record = train(cfg)
    except FmnPatchError as e:  # bad input: one line and exit 2, as at the fmnpatch CLI
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    phase = family_of(cfg).phase
    log(f"done in {record['timings_s']['total'] / 60:.1f} min, final loss {record[phase]['final_loss']:.4f}")


if __name__ == "__main__":
    main()
