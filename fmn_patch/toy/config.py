"""The options of the toy trainers, one frozen dataclass per family: what determines a trained toy model.

Their fields are what `training.json` records under "config" (read back by `--resume`, the cards and the tests),
so a field is renamed only with the records. Both carry the options of the shared loop under the same names; the
UNet toy's `unet_steps` and `unet_batch` are read by that loop as `steps` and `batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fmn_patch import values
from fmn_patch.toy.paths import toy_pipeline_path, toy_sd3_pipeline_path
from fmn_patch.toy.world import NAME as WORLD

#: Whole-number options that may be 0 (the rest are counts of 1 or more).
MAY_BE_ZERO = ("seed", "warmup", "stop_at")


def _check(cfg: Any) -> None:
    """A trainer config's world and its whole-number options (a bad one raises FmnPatchError naming it)."""
    if cfg.world != WORLD:
        raise ValueError(
            f"world {cfg.world!r} is not this version's toy world, {WORLD}; v1 lives in git history"
        )
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, int) and not isinstance(value, bool):
            values.whole(value, f.name.replace("_", "-"), 0 if f.name in MAY_BE_ZERO else 1, example=1000)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained toy model (``toy``, the UNet)."""

    out: Path = field(default_factory=toy_pipeline_path)  # where the pipeline is saved
    seed: int = 0
    images: int = 100_000  # rendered training images: 118 concepts, v1's 10 had 50,000
    vae_steps: int = 500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 16_000  # v1's 3,500 drew v2's objects as blobs (BENCHMARKS.md, the v2 pilot)
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
    world: str = WORLD  # the world it learns, recorded in training.json; a record without it is v1's
    resume: bool = False  # continue from the state written with the last checkpoint, bit for bit
    state: Path | None = None  # where that state goes (~5x the model); None: a cache folder

    def __post_init__(self) -> None:
        _check(self)

    @property
    def steps(self) -> int:
        """The denoiser phase's steps, as the shared loop reads them."""
        return self.unet_steps

    @property
    def batch(self) -> int:
        """The denoiser phase's batch, as the shared loop reads it."""
        return self.unet_batch


@dataclass(frozen=True)
class Sd3TrainConfig:
    """Everything that determines the trained toy MMDiT (``toy-sd3``)."""

    out: Path = field(default_factory=toy_sd3_pipeline_path)  # where the pipeline is saved
    vae: Path = field(default_factory=lambda: toy_pipeline_path() / "vae")  # the UNet toy's trained VAE
    seed: int = 0
    images: int = 100_000  # rendered training images (the UNet toy's, same seed)
    steps: int = 8_000  # v1's toy-sd3 had 3,500
    batch: int = 64
    lr: float = 1e-3  # transformer and text encoders
    warmup: int = 200
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    weight_decay: float = 1e-2
    ema: float = 0.999
    caption_dropout: float = 0.1  # share of empty captions, for classifier-free guidance
    save_every: int = 500  # also save a checkpoint every this many steps
    stop_at: int = 0  # > 0: stop after this many steps, keeping the LR schedule of `steps`
    max_minutes: float = 0.0  # > 0: stop after this long (breaks determinism)
    threads: int = 1
    world: str = WORLD  # the world it learns, as the UNet toy's `world`; its VAE must have learnt the same
    resume: bool = False  # continue from the state written with the last checkpoint, bit for bit
    state: Path | None = None  # where that state goes (~5x the model); None: a cache folder (state_dir)

    def __post_init__(self) -> None:
        _check(self)
