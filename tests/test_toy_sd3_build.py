"""`make toy-sd3` (fmn_patch.toy.build --family sd3) end to end at smoke size: every part is written and loads,
the model is recognised as the toy world's MMDiT by its contents, it reuses the UNet toy's VAE weights, and a
rebuild is the same bits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import load_file

from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import load_base
from fmn_patch.toy import build as toy_build
from fmn_patch.toy import train as toy_train
from fmn_patch.toy.family import SD3
from fmn_patch.toy.paths import toy_pipeline_path
from fmn_patch.toy.train import Sd3TrainConfig, train

PARTS = {
    "transformer": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
    "text_encoder_2": "model.safetensors",
    "text_encoder_3": "model.safetensors",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy_sd3") / "pipeline"
    train(SD3.quick_config(out=out))
    return out


def test_the_trained_model_loads_and_is_the_toy_world(trained: Path) -> None:
    pipe = StableDiffusion3Pipeline.from_pretrained(trained)
    assert pipe.transformer.transformer_blocks[-1].context_pre_only
    assert pipe.tokenizer_3.model_max_length == 16 and pipe.tokenizer_3.pad_token_id == 0
    base = load_base(str(trained))  # by path: recognised by its contents
    assert base.world is not None and base.world.name == "toy-sd3"
    assert (base.bench, base.architecture, base.describe().model) == ("toy", "fmn-toy-sd3", "toy-sd3")
    record = json.loads((trained / "training.json").read_text())
    assert record["transformer"]["steps_done"] == SD3.quick["steps"]


@pytest.mark.slow
def test_build_writes_every_part_with_its_card(tmp_path: Path) -> None:
    built = tmp_path / "toy_sd3"
    toy_build.build(toy_build.parse_args(["--family", "sd3", "--data", str(built), "--quick"]))
    assert (built / "pipeline" / "model_index.json").exists()
    record = json.loads((built / "build.json").read_text())
    assert set(record["timings_s"]) == {"train", "card", "total"} and record["family"] == "sd3"
    card = json.loads((built / "card.json").read_text())
    assert set(card["bench"]["concepts"]) >= {"circle", "bob", "striped"} and card["t5_length"] == 16
    assert "## Building it" in (built / "README.md").read_text()


def test_the_vae_is_the_unet_toys(trained: Path) -> None:
    ours = load_file(trained / "vae" / PARTS["vae"])
    theirs = load_file(toy_pipeline_path() / "vae" / PARTS["vae"])
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    config = json.loads((trained / "vae" / "config.json").read_text())
    assert config["shift_factor"] != 0.0  # measured on the training latents, SD3-style


def test_a_rebuild_is_the_same_bits(trained: Path, tmp_path: Path) -> None:
    train(SD3.quick_config(out=tmp_path))
    for part, name in PARTS.items():
        a, b = load_file(trained / part / name), load_file(tmp_path / part / name)
        assert a.keys() == b.keys()
        assert all(a[k].equal(b[k]) for k in a), part


def test_quick_refuses_to_overwrite_the_committed_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        toy_build.parse_args(["--family", "sd3", "--quick"])
    assert exc.value.code == 2
    assert "--data DIR" in capsys.readouterr().err


def test_a_resumed_run_is_the_same_bits_as_one_run(trained: Path, tmp_path: Path) -> None:
    """The 3.5-hour CPU build can be spread over several sittings: stop, resume, and get the same model."""
    state = tmp_path / "state"
    quick = {**SD3.quick, "save_every": 1, "out": tmp_path / "p", "state": state}
    train(Sd3TrainConfig(**quick, stop_at=2))  # type: ignore[arg-type]
    assert json.loads((state / "state.json").read_text())["step"] == 2
    with pytest.raises(FmnPatchError, match="lr differ from the run being resumed"):
        train(Sd3TrainConfig(**{**quick, "lr": 0.5}, resume=True))  # type: ignore[arg-type]
    record = train(Sd3TrainConfig(**quick, resume=True))  # type: ignore[arg-type]
    assert record["transformer"]["steps_done"] == SD3.quick["steps"]
    for part, name in PARTS.items():
        a, b = load_file(trained / part / name), load_file(tmp_path / "p" / part / name)
        assert all(a[k].equal(b[k]) for k in a), part
    with pytest.raises(FmnPatchError, match="no training state"):
        train(Sd3TrainConfig(**{**quick, "state": tmp_path / "none"}, resume=True))  # type: ignore[arg-type]


def test_a_refused_resume_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quick = {**SD3.quick, "out": tmp_path / "p", "state": tmp_path / "none"}
    argv = [a for k, v in quick.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    with pytest.raises(SystemExit) as exc:
        toy_train.main(["--family", "sd3", *argv, "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err[-1].startswith("error: --resume: no training state in")
