"""Both toy trainers resume bit for bit: a run stopped at a checkpoint and resumed writes the same weights as one
run straight through; a resume with other options, or without a state, is refused in one line."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from fmn_patch.errors import FmnPatchError, OutputError
from fmn_patch.toy.checkpoint import resumable_record
from fmn_patch.toy.train import Sd3TrainConfig, TrainConfig, parse_args, train

#: training.json's "config" as `python -m fmn_patch.toy.train --world v2 --images 100000 --unet-steps 16000
#: --save-every 1000 --out out/toy-v2/pipeline --state out/toy-v2/state` wrote it at 1927df0 (v1 the default then):
#: the run of the committed v2 toy, which the default options must resume.
V2_RUN = {
    "out": "out/toy-v2/pipeline", "seed": 0, "images": 100000, "vae_steps": 500, "vae_batch": 32, "vae_lr": 0.001,
    "kl_weight": 1e-06, "unet_steps": 16000, "unet_batch": 64, "lr": 0.001, "warmup": 200, "min_lr_ratio": 0.1,
    "weight_decay": 0.01, "ema": 0.999, "caption_dropout": 0.1, "save_every": 1000, "stop_at": 0,
    "max_minutes": 0.0, "threads": 1, "world": "v2", "resume": False, "state": "out/toy-v2/state",
}  # fmt: skip


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


def _recorded(tmp_path: Path, config: dict) -> tuple[Path, Path]:
    out, state = tmp_path / "pipeline", tmp_path / "state"
    out.mkdir()
    state.mkdir()
    (state / "state.json").write_text('{"step": 1000, "ema_steps": 1000}')
    (out / "training.json").write_text(
        json.dumps({"config": {**config, "out": str(out), "state": str(state)}})
    )
    return out, state


def test_the_default_options_resume_the_run_of_the_v2_toy(tmp_path):
    out, state = _recorded(tmp_path, V2_RUN)
    cfg = parse_args(["--out", str(out), "--state", str(state), "--resume"])
    assert resumable_record(cfg, out, state)["config"]["world"] == "v2"


@pytest.mark.parametrize("world", ["v1", None], ids=["v1", "recorded before the world option"])
def test_a_v1_run_is_not_resumed(tmp_path, world):
    config = {**V2_RUN, "images": 50000, "unet_steps": 3500, "world": world}
    if world is None:
        del config["world"]
    out, state = _recorded(tmp_path, config)
    with pytest.raises(FmnPatchError, match="--resume: world differ from the run being resumed"):
        resumable_record(
            TrainConfig(out=out, state=state, images=50000, unet_steps=3500, resume=True), out, state
        )
