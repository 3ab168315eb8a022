"""The committed toy pipeline: stock diffusers loads it, it generates, and it stays small; one of an older toy world
is refused by name."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import StableDiffusionPipeline

from fmn_patch.errors import FmnPatchError
from fmn_patch.families import registry
from fmn_patch.families.base import load_base
from fmn_patch.toy import load_toy_pipeline, toy_pipeline_path


def test_committed_pipeline_is_small_and_safetensors_only() -> None:
    path = toy_pipeline_path()
    files = [p for p in path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert sum(p.stat().st_size for p in files) < 25e6


def test_stock_diffusers_loads_and_generates() -> None:
    pipe = StableDiffusionPipeline.from_pretrained(toy_pipeline_path())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a red circle", "bob"], num_inference_steps=2, guidance_scale=5.0, output_type="pt")
    assert out.images.shape == (2, 3, 32, 32)
    assert torch.isfinite(out.images).all()


def test_generation_is_deterministic_per_seed() -> None:
    pipe = load_toy_pipeline()

    def sample(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return pipe("a blue star", num_inference_steps=2, generator=gen, output_type="pt").images

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))


def test_cross_attention_targets_exist() -> None:
    pipe = load_toy_pipeline()
    names = [n for n, _ in pipe.unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))]
    assert len(names) >= 6  # down, mid and up cross-attention blocks
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_a_named_toy_of_an_older_world_is_refused_in_one_line(monkeypatch) -> None:
    """A committed toy whose tokenizer reads another world's words (trained before the world changed) is not
    recognised as the toy world's model; by its name it is refused with the command that rebuilds it."""
    older = replace(registry.named_base("toy"), recognise=lambda pipe: False)
    monkeypatch.setitem(registry._NAMED, "toy", older)
    with pytest.raises(FmnPatchError, match=r"holds no toy model of this version .* `make toy-model`$"):
        load_base("toy")
