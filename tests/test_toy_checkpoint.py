"""Both toy trainers resume bit for bit: a run stopped at a checkpoint and resumed writes the same weights as one
run straight through; a resume with other options, or without a state, is refused in one line."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from fmn_patch.errors import FmnPatchError, OutputError
from fmn_patch.toy.train import Sd3TrainConfig, TrainConfig, train


def _digest(folder: Path) -> str:
    files = sorted(folder.rglob("*.safetensors"))
    assert files, f"no weights in {folder}"
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def _straight_and_resumed(tmp_path: Path, cfg, train, stop: int) -> tuple[str, str]:
    straight = replace(cfg, out=tmp_path / "a", state=tmp_path / "state-a")
    train(straight)
    parted = replace(cfg, out=tmp_path / "b", state=tmp_path / "state-b")
    train(replace(parted, stop_at=stop))
    assert (tmp_path / "state-b" / "state.safetensors").exists()
    train(replace(parted, resume=True))
    return _digest(tmp_path / "a"), _digest(tmp_path / "b")


def test_unet_toy_resumes_bit_for_bit(tmp_path):
    cfg = TrainConfig(images=96, vae_steps=2, unet_steps=5, save_every=2)
    straight, resumed = _straight_and_resumed(tmp_path, cfg, train, stop=3)
    assert straight == resumed


def test_sd3_toy_resumes_bit_for_bit(tmp_path):
    cfg = Sd3TrainConfig(images=96, steps=5, save_every=2)
    straight, resumed = _straight_and_resumed(tmp_path, cfg, train, stop=3)
    assert straight == resumed


def test_resume_refuses_other_options_and_a_missing_state(tmp_path):
    cfg = TrainConfig(
        out=tmp_path / "p",
        state=tmp_path / "s",
        images=64,
        vae_steps=1,
        unet_steps=4,
        save_every=2,
        stop_at=2,
    )
    train(cfg)
    with pytest.raises(FmnPatchError, match="lr, unet_steps differ"):
        train(replace(cfg, resume=True, unet_steps=9, lr=0.5))
    with pytest.raises(FmnPatchError, match="no training state"):
        train(replace(cfg, resume=True, state=tmp_path / "elsewhere"))


def test_trainer_cli_refuses_a_resume_without_state_with_exit_2(tmp_path, capsys):
    from fmn_patch.toy.train import main

    with pytest.raises(SystemExit) as stop:
        main(["--resume", "--out", str(tmp_path / "none"), "--state", str(tmp_path / "none-state")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --resume: no training state in")


@pytest.mark.parametrize(
    ("fault", "seen"),
    [(KeyboardInterrupt, KeyboardInterrupt), (OSError(28, "No space left on device"), OutputError)],
    ids=["ctrl-c", "disk"],
)
def test_an_interrupted_checkpoint_leaves_the_previous_one(tmp_path, fault, seen):
    """Ctrl-C or a full disk while a checkpoint is written: the last complete checkpoint stays as it was, the live
    weights are back, and no temp folder is left beside it."""
    import torch
    from diffusers import UNet2DModel

    from fmn_patch.toy.train import Ema, save

    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=8,
        block_out_channels=(8,),
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        layers_per_block=1,
        norm_num_groups=8,
    )
    ema = Ema(model.parameters(), decay=0.9)
    out = tmp_path / "pipeline"
    save(lambda: model, ema, out, {"step": 1})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    live = [p.detach().clone() for p in model.parameters()]

    class Failing:  # the real model's save, then the fault before the record is complete
        def save_pretrained(self, folder: Path, **kwargs) -> None:
            model.save_pretrained(folder, **kwargs)
            raise fault

    with pytest.raises(seen):  # a full disk is one line naming the folder
        save(Failing, ema, out, {"step": 2})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline"]
    assert all(torch.equal(p, v) for p, v in zip(model.parameters(), live, strict=True))
