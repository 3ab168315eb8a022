"""Every toy is a family description run by one trainer, one builder and one card: a tiny run of each family
through the same `train` entry point gives that family's pipeline and record; the committed cards are what the
one card renders from the committed measurements; a run saved before an option existed still resumes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline
from safetensors.torch import load_file

from fmn_patch.errors import FmnPatchError
from fmn_patch.families.base import load_base
from fmn_patch.toy import card
from fmn_patch.toy.family import FAMILIES, SD3, UNET, family_of
from fmn_patch.toy.paths import toy_judge_path
from fmn_patch.toy.train import Sd3TrainConfig, TrainConfig, parse_args, train

PIPELINES = {"unet": StableDiffusionPipeline, "sd3": StableDiffusion3Pipeline}


@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_one_loop_trains_every_family(key: str, tmp_path: Path) -> None:
    family = FAMILIES[key]
    record = train(family.quick_config(images=64, out=tmp_path / "p", state=tmp_path / "s"))
    assert family_of(family.config()) is family
    assert record[family.phase]["steps_done"] == family.config(**family.quick).steps
    assert set(record["config"]) >= {"world", "steps" if key == "sd3" else "unet_steps", "resume", "state"}
    pipe = PIPELINES[key].from_pretrained(tmp_path / "p")
    assert type(pipe) is PIPELINES[key]
    base = load_base(str(tmp_path / "p"))  # recognised as the toy world's model by its contents
    assert base.world is not None and base.world.name == family.name


def test_the_families_are_the_two_toys() -> None:
    assert (UNET.config, UNET.name, UNET.phase) == (TrainConfig, "toy", "unet")
    assert (SD3.config, SD3.name, SD3.phase) == (Sd3TrainConfig, "toy-sd3", "transformer")
    assert UNET.trains_judge and not SD3.trains_judge
    with pytest.raises(TypeError, match="no toy family's config"):
        family_of(object())


def test_the_family_option_picks_the_config() -> None:
    assert parse_args(["--family", "sd3", "--world", "v2", "--steps", "7"]) == Sd3TrainConfig(steps=7)
    assert parse_args(["--unet-steps", "7"]) == TrainConfig(unet_steps=7)
    for world in ("v1", "v3"):
        with pytest.raises(ValueError, match=f"world '{world}' is not this version's toy world, v2"):
            Sd3TrainConfig(world=world)
    for argv in (["--family", "flux"], ["--family", "sd3", "--unet-steps", "3"], ["--world", "v1"]):
        with pytest.raises(SystemExit) as exit_:
            parse_args(argv)
        assert exit_.value.code == 2


@pytest.mark.parametrize("family", [UNET, SD3], ids=["unet", "sd3"])
def test_the_committed_cards_are_what_the_card_renders(family, tmp_path: Path) -> None:
    for name in ("card.json", "build.json"):
        shutil.copy(family.data_dir / name, tmp_path / name)
    card.write_readme(tmp_path, family.data_dir / "pipeline", toy_judge_path(), family)
    assert (tmp_path / "README.md").read_text() == (family.data_dir / "README.md").read_text()


def test_the_defaults_are_the_recipe_of_the_committed_v2_toys() -> None:
    unet, sd3 = TrainConfig(), Sd3TrainConfig()
    assert (unet.world, unet.images, unet.unet_steps, unet.vae_steps) == ("v2", 100_000, 16_000, 500)
    assert (sd3.world, sd3.images, sd3.steps) == ("v2", 100_000, 8_000)


def test_a_run_recorded_before_an_option_existed_resumes(tmp_path: Path) -> None:
    """`max_minutes` is newer than toy-sd3's committed record: a missing option was its default. A record without
    `world` is a v1 run, which this version's world cannot continue."""
    cfg = SD3.quick_config(images=64, save_every=1)
    straight, parted = (
        replace(cfg, out=tmp_path / "a", state=tmp_path / "sa"),
        replace(cfg, out=tmp_path / "b"),
    )
    parted = replace(parted, state=tmp_path / "sb")
    train(straight)
    train(replace(parted, stop_at=2))
    record_file = tmp_path / "b" / "training.json"
    record = json.loads(record_file.read_text())
    del record["config"]["world"]
    record_file.write_text(json.dumps(record))
    with pytest.raises(FmnPatchError, match="world differ from the run being resumed"):
        train(replace(parted, resume=True))
    record["config"]["world"] = "v2"
    del record["config"]["max_minutes"]
    record_file.write_text(json.dumps(record))
    train(replace(parted, resume=True))
    a, b = (load_file(tmp_path / d / "transformer" / "diffusion_pytorch_model.safetensors") for d in "ab")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
