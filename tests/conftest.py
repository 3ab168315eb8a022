"""Shared fixtures: tiny random pipelines (built once per session, loaded fresh per test) and hand-made patches."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

from fmn_patch.families.base import load_base
from fmn_patch.format import Patch, PatchConcept, PatchInfo

warnings.filterwarnings("ignore", category=FutureWarning)
logging.getLogger("transformers").setLevel(logging.ERROR)
logging.getLogger("diffusers").setLevel(logging.ERROR)

KINDS = ("sd1", "sd2", "sdxl")
MMDIT_KINDS = ("sd3", "flux")
# One thread: the models here are tiny, and on a busy 2-core machine two threads each ran many times slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pipeline_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from fmn_patch.testing.tiny import build_sd

    root = tmp_path_factory.mktemp("pipelines")
    return {kind: build_sd(kind, root) for kind in KINDS}


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def mmdit_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny SD3.5-like and Flux-like pipelines (tokenizers written here), built once per session."""
    from fmn_patch.testing.tiny_mmdit import build_mmdit

    root = tmp_path_factory.mktemp("mmdit")
    return {kind: build_mmdit(kind, root) for kind in MMDIT_KINDS}


@pytest.fixture(params=MMDIT_KINDS)
def mkind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def sd1(pipeline_dirs: dict[str, Path]):
    return load_base(str(pipeline_dirs["sd1"]))


def random_patch(pipe, rank: int = 2, seed: int = 0, scale: float = 0.3, concept: str = "circle") -> Patch:
    """A hand-made patch: random factors on every target of the pipeline's family, sized to change images."""
    gen = torch.Generator().manual_seed(seed)
    factors = {}
    for module, (out_f, in_f) in pipe.family.adapters.target_shapes().items():
        a = torch.randn(rank, in_f, generator=gen) * scale / in_f**0.5
        b = torch.randn(out_f, rank, generator=gen) * scale
        factors[module] = (a, b)
    base = pipe.describe()
    info = PatchInfo(
        method="manual",
        concepts=(PatchConcept(concept, "object"),),
        base_model=base.model,
        base_hash=base.hash,
        architecture=base.architecture,
        config={"seed": seed, "rank": rank, "scale": scale},
    )
    return Patch(factors, info, pipe.family.adapters.component)


def with_encoders(
    pipe, patch: Patch, layers: int = 1, rank: int = 2, seed: int = 1, scale: float = 0.3
) -> Patch:
    """``patch`` with random factors added on the last ``layers`` layers of each CLIP text encoder of the base."""
    gen = torch.Generator().manual_seed(seed)
    encoders = {}
    for component, targets in pipe.family.adapters.encoder_targets().items():
        last = max(int(m.split(".")[3]) for m in targets)
        encoders[component] = {
            m: (
                torch.randn(rank, t.in_features, generator=gen) * scale / t.in_features**0.5,
                torch.randn(t.out_features, rank, generator=gen) * scale,
            )
            for m, t in targets.items()
            if int(m.split(".")[3]) > last - layers
        }
    return Patch(patch.factors, patch.info, patch.component, encoders)


def render(pipe, prompt: str = "a photo of bob", seed: int = 0, steps: int = 2) -> torch.Tensor:
    """Images as a float tensor, deterministic for a seed (MMDiTs at the family's sequence length)."""
    if pipe.family.adapters.component != "unet":
        return pipe.family.images.generate([prompt], [seed], steps=steps, guidance=3.0)
    out = pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        height=32,
        width=32,
    )
    return out.images


#: The peers' closed forms are checked in float64 against least squares (tests/test_peers.py, tests/test_mace.py).
F64 = torch.float64


def randn64(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def lstsq64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.lstsq(a, b, driver="gelsd").solution
