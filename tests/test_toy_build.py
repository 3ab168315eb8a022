"""`make toy-model` (fmn_patch.toy.build) end to end at smoke size: every part is written, loads, and is the
same bits as the training script run on its own (the judge alongside changes the wall time, not the weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from fmn_patch.toy import build as toy_build
from fmn_patch.toy.family import UNET
from fmn_patch.toy.judge import ToyJudge
from fmn_patch.toy.train import train


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("toy")
    toy_build.build(toy_build.parse_args(["--data", str(data), "--quick"]))
    return data


def test_build_writes_every_part_and_they_load(built: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(built / "pipeline")
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    ToyJudge.load(built / "judge.safetensors")
    record = json.loads((built / "build.json").read_text())
    timings = record["timings_s"]
    assert set(timings) == {"train", "judge", "judge_started_after", "card", "total"}
    assert timings["total"] >= timings["train"] > timings["judge_started_after"] > 0
    judge = json.loads((built / "judge.json").read_text())
    assert timings["judge"] == judge["train_s"]
    assert judge["config"]["steps"] == toy_build.QUICK_JUDGE["steps"]
    assert judge["config"]["vae"] == str(built / "pipeline" / "vae")  # trained on this build's VAE
    readme = (built / "README.md").read_text()
    assert "## Building it all" in readme and f"total {timings['total'] / 60:.1f} min" in readme
    assert json.loads((built / "card.json").read_text())["bench"]["concepts"]


def test_build_model_is_the_training_script_bit_for_bit(built: Path, tmp_path: Path) -> None:
    train(UNET.quick_config(out=tmp_path))
    for part in ("unet", "text_encoder", "vae"):
        name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
        a, b = load_file(built / "pipeline" / part / name), load_file(tmp_path / part / name)
        assert a.keys() == b.keys()
        assert all(a[k].equal(b[k]) for k in a), part


def test_quick_refuses_to_overwrite_the_committed_world(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        toy_build.parse_args(["--quick"])
    assert exc.value.code == 2
    assert "--data DIR" in capsys.readouterr().err
