"""The toy families: what makes each toy model what it is, one description each; the trainer
(`fmn_patch.toy.train`), the builder (`fmn_patch.toy.build`) and the card (`fmn_patch.toy.card`) are shared.

A description names the architecture's functions (`fmn_patch.toy.model` for the UNet toy, `fmn_patch.toy.model_sd3`
for the MMDiT), where the latents come from (a VAE trained with the model, or the UNet toy's reused), the
parametrisation (epsilon DDPM or rectified flow), the training options with the defaults of the committed model,
and the data folder. A third toy is an architecture module and one more `ToyFamily` in `FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmn_patch.toy import model, model_sd3
from fmn_patch.toy.card_text import sd3_card, unet_card
from fmn_patch.toy.config import Sd3TrainConfig, TrainConfig
from fmn_patch.toy.latents import LatentSource, ReusedVae, TrainedVae
from fmn_patch.toy.objective import EpsilonDdpm, Objective, RectifiedFlow
from fmn_patch.toy.paths import DATA_DIR, SD3_DATA_DIR

Module = torch.nn.Module
Tokenizers = Callable[[Path, Iterable[str]], tuple]
Trainable = Callable[[Any, tuple], tuple[Module, tuple[Module, ...]]]
Predict = Callable[[Any, Module, tuple, torch.Tensor, torch.Tensor, tuple], torch.Tensor]
Assemble = Callable[[Any, tuple, tuple, Any, Module], Any]
CardText = Callable[[dict, dict, dict, dict | None], str]


@dataclass(frozen=True)
class ToyFamily:
    """One toy model family, as the shared trainer, builder and card need it."""

    key: str  # its name at the command line: `--family KEY`
    name: str  # the base it builds, as registered (`load_base(name)`); also names its training-state folder
    config: type  # its training options (`fmn_patch.toy.config`); the defaults build the committed model
    quick: Mapping[str, Any]  # the options of `build --quick`: a few steps on a few images, a smoke run
    data_dir: Path  # the committed build: pipeline/, card.json, README.md, build.json
    sizes: Callable[[], Any]  # the architecture's sizes (a frozen dataclass, recorded as "model")
    # (folder, the world's caption words) -> its tokenizers
    tokenizers: Tokenizers
    # (sizes, tokenizers) -> (denoiser, text encoders), initialised from the global RNG in the order it builds them
    trainable: Trainable
    # (sizes, denoiser, text encoders, x_t, timestep, token ids of each tokenizer) -> the prediction
    predict: Predict
    objective: Callable[[Any], Objective]  # sizes -> what the denoiser learns to predict
    latents: LatentSource  # where the training latents come from
    pipeline: Assemble  # (sizes, tokenizers, text encoders, vae, denoiser) -> the pipeline that is saved
    phase: str  # the denoiser phase's key in training.json ("timings_s" and its record)
    label: str  # the denoiser phase's name in progress lines
    # its build trains the toy judge alongside, on the VAE it trains; else the committed judge measures it
    trains_judge: bool
    card: CardText  # (card, training, judge, build records) -> its README.md

    def quick_config(self, **changes: Any) -> Any:
        """The `--quick` training options, with `changes`."""
        return self.config(**{**self.quick, **changes})


UNET = ToyFamily(
    key="unet",
    name="toy",
    config=TrainConfig,
    quick={"images": 512, "vae_steps": 3, "unet_steps": 3, "save_every": 1000},
    data_dir=DATA_DIR,
    sizes=model.ModelConfig,
    tokenizers=model.tokenizers,
    trainable=model.trainable,
    predict=model.predict,
    objective=lambda sizes: EpsilonDdpm(model.build_train_scheduler(sizes), sizes.train_timesteps),
    latents=TrainedVae(model.build_vae),
    pipeline=model.pipeline,
    phase="unet",
    label="unet",
    trains_judge=True,
    card=unet_card,
)

SD3 = ToyFamily(
    key="sd3",
    name="toy-sd3",
    config=Sd3TrainConfig,
    quick={"images": 256, "steps": 3, "save_every": 1000},
    data_dir=SD3_DATA_DIR,
    sizes=model_sd3.Sd3ModelConfig,
    tokenizers=model_sd3.tokenizers,
    trainable=model_sd3.trainable,
    predict=model_sd3.predict,
    objective=lambda sizes: RectifiedFlow(sizes.shift),
    latents=ReusedVae(),
    pipeline=model_sd3.pipeline,
    phase="transformer",
    label="mmdit",
    trains_judge=False,
    card=sd3_card,
)

#: Every toy family, by its command-line key.
FAMILIES = {f.key: f for f in (UNET, SD3)}


def family_of(cfg: object) -> ToyFamily:
    """The family whose training options `cfg` is."""
    for family in FAMILIES.values():
        if type(cfg) is family.config:
            return family
    raise TypeError(
        f"{type(cfg).__name__} is no toy family's config; use one of "
        + ", ".join(f.config.__name__ for f in FAMILIES.values())
    )
