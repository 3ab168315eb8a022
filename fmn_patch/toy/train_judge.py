"""Train the toy judge: `python -m fmn_patch.toy.train_judge [--out PATH] [--steps N] ...`.

Trains `fmn_patch.judge.ToyJudgeNet` on freshly rendered images with augmentation (blur, noise, brightness,
contrast, horizontal flips) and, when the toy pipeline's VAE exists, on VAE reconstructions too (generated
images look like those). Reports held-out accuracy per head on renders and on reconstructions, and writes
the weights (safetensors) plus `judge.json` (config and accuracies) beside them.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from fmn_patch.toy import world
from fmn_patch.toy.judge import PERSON, TOY_HEADS, ToyJudge, ToyJudgeNet, identity_probs
from fmn_patch.toy.options import parse_config
from fmn_patch.toy.paths import toy_judge_path, toy_pipeline_path
from fmn_patch.toy.world import Sample


@dataclass(frozen=True)
class JudgeTrainConfig:
    """Everything that determines the trained judge."""

    out: Path = field(default_factory=toy_judge_path)
    vae: Path = field(
        default_factory=lambda: toy_pipeline_path() / "vae"
    )  # reconstructions through this VAE join the training data
    seed: int = 1000  # the toy model trains on seed 0; the held-out set uses seed + 1
    images: int = 30_000
    heldout: int = 4_000
    steps: int = 1_500
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    threads: int = 1


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)


def targets(labels: list[Sample]) -> dict[str, torch.Tensor]:
    """Class index per head of the judge; -100 (ignored) for a person's attributes on an object."""
    out: dict[str, list[int]] = {head: [] for head in TOY_HEADS}
    for s in labels:
        look = s.look
        out["subject"].append(TOY_HEADS["subject"].index(PERSON if look else s.subject))
        out["style"].append(TOY_HEADS["style"].index(s.style))
        out["colour"].append(TOY_HEADS["colour"].index(s.colour))
        for head, value in zip(world.ATTRIBUTES, look.values() if look else [None] * 4, strict=True):
            out[head].append(TOY_HEADS[head].index(value) if value else -100)
    return {head: torch.tensor(values) for head, values in out.items()}


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Pass [0, 1] images through the VAE (posterior mean) and back."""
    out = [
        vae.decode(vae.encode(x[i : i + batch] * 2 - 1).latent_dist.mean).sample.add(1).div(2).clamp(0, 1)
        for i in range(0, len(x), batch)
    ]
    return torch.cat(out)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random blur, contrast, brightness, noise and horizontal flips."""
    n = len(x)
    sigma = torch.rand(n, generator=gen) * 1.0 + 0.2
    offsets = torch.arange(-2, 3, dtype=torch.float32)
    kernel1d = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))  # (N, 5)
    kernel1d = kernel1d / kernel1d.sum(-1, keepdim=True)
    kernel = (kernel1d[:, :, None] * kernel1d[:, None, :])[:, None].repeat_interleave(3, 0)  # (3N, 1, 5, 5)
    blurred = F.conv2d(
        F.pad(x.reshape(1, 3 * n, *x.shape[-2:]), (2, 2, 2, 2), mode="replicate"), kernel, groups=3 * n
    )
    use_blur = (torch.rand(n, generator=gen) < 0.5).view(n, 1, 1, 1)
    x = torch.where(use_blur, blurred.view_as(x), x)
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
    brightness = 0.16 * torch.rand(n, 1, 1, 1, generator=gen) - 0.08
    noise = torch.randn(x.shape, generator=gen) * (0.06 * torch.rand(n, 1, 1, 1, generator=gen))
    x = (x - 0.5) * contrast + 0.5 + brightness + noise
    flip = (torch.rand(n, generator=gen) < 0.5).view(n, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x).clamp(0, 1)


def judge_step(
    net: ToyJudgeNet,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor,
    y: dict[str, torch.Tensor],
) -> float:
    """One optimiser step: the sum over heads of each head's cross-entropy (targets of -100 are ignored)."""
    logits = net(images)  # {head: (N, classes)}
    loss = torch.stack([F.cross_entropy(logits[k], y[k]) for k in logits]).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def accuracy(
    judge: ToyJudge, x: torch.Tensor, y: dict[str, torch.Tensor], labels: list[Sample]
) -> dict[str, float]:
    """Held-out accuracy per head (targets of -100 left out), of identities (all four attributes and 'person'
    right) and of the worst identity."""
    probs = judge.probs(x)
    out: dict[str, float] = {}
    for k in judge.heads:
        keep = y[k] != -100
        out[k] = float((probs[k].argmax(-1)[keep] == y[k][keep]).float().mean())
    names = world.IDENTITIES
    truth = torch.tensor([names.index(s.subject) if s.subject in names else -1 for s in labels])  # (N,)
    hit = identity_probs(probs).argmax(-1) == truth
    out["identity"] = float(hit[truth >= 0].float().mean())
    out["worst_identity"] = min(float(hit[truth == i].float().mean()) for i in truth.unique() if i >= 0)
    return out


def train_judge(cfg: JudgeTrainConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    # The VAE first: `fmn_patch.toy.build` starts the judge as soon as the VAE is saved, and the UNet phase
    # rewrites the pipeline folder (same VAE weights) only after its first 1,000 steps.
    vae = AutoencoderKL.from_pretrained(cfg.vae).eval() if (cfg.vae / "config.json").exists() else None
    images, labels = world.dataset(cfg.images, cfg.seed)
    x, y = to_unit(images), targets(labels)
    test_images, test_labels = world.dataset(cfg.heldout, cfg.seed + 1)
    x_test, y_test = to_unit(test_images), targets(test_labels)
    if vae is None:
        log(f"no VAE at {cfg.vae}: training on renders only")
    x_rec = reconstruct(vae, x[: cfg.images // 2]) if vae is not None else None
    log(f"data ready in {time.perf_counter() - t0:.0f} s")

    net = ToyJudgeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    net.train()
    losses: list[float] = []
    for step in range(cfg.steps):
        idx = torch.randint(len(x), (cfg.batch,), generator=gen)
        batch = x[idx]
        if x_rec is not None:  # half of each batch from reconstructions, where available
            half = idx[: cfg.batch // 2] % len(x_rec)
            batch[: cfg.batch // 2] = x_rec[half]
            idx = torch.cat([half, idx[cfg.batch // 2 :]])
        losses.append(judge_step(net, opt, sched, augment(batch, gen), {k: v[idx] for k, v in y.items()}))
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"judge step {step:5d}/{cfg.steps}  loss {np.mean(losses[-100:]):.4f}")
    judge = ToyJudge(net)
    record: dict = {"config": asdict(cfg), "world": world.NAME, "train_s": time.perf_counter() - t0}
    record["params"] = sum(p.numel() for p in net.parameters())
    record["heldout_accuracy"] = accuracy(judge, x_test, y_test, test_labels)
    if vae is not None:
        record["heldout_vae_accuracy"] = accuracy(judge, reconstruct(vae, x_test), y_test, test_labels)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    judge.save(cfg.out)
    cfg.out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    log(json.dumps({k: v for k, v in record.items() if "accuracy" in k}))
    return record


def parse_args(argv: list[str] | None = None) -> JudgeTrainConfig:
    return parse_config(JudgeTrainConfig, argv, "python -m fmn_patch.toy.train_judge", __doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> None:
    train_judge(parse_args(argv))


if __name__ == "__main__":
    main()
