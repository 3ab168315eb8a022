"""The family seam holds and calls leave the caller's state as they found it.

- A third family, defined and registered here and nowhere else, is picked up by ``load_base``, ``train_patch``,
  ``edit_patch`` and ``apply_patches``: the methods ask the family, not the UNet.
- The toy base named ``toy`` and the same folder given by its path get the same defaults.
- ``train_patch``, ``edit_patch``, ``fuse_patches`` and ``run_attacks`` leave the global RNG state, the active
  adapters and every ``requires_grad`` flag as they were.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import random_patch, render

from fmn_patch import (
    AttackConfig,
    EditConfig,
    InversionAttackConfig,
    SamplerConfig,
    SearchConfig,
    TrainConfig,
    apply_patches,
    edit_patch,
    fuse_patches,
    load_base,
    load_bench,
    remove_patches,
    run_attacks,
    train_patch,
)
from fmn_patch.families import register_family, unregister_family
from fmn_patch.families.unet import UNetFamily
from fmn_patch.format.targets import TargetKind, register_targets, unregister_targets
from fmn_patch.toy import toy_judge_path, toy_pipeline_path

FAST = TrainConfig(steps=2, images_per_prompt=1, image_steps=2, batch_size=2, bench="toy")
MARK = "_fmn_test_family"


# ------------------------------------------------------------------------------------------- a third family
class UpBlockFamily(UNetFamily):
    """A stand-in family: its own folder marker and loader, its own ModelSpec id, and patches that touch only the
    decoder half's cross-attention. Everything a method asks of it is counted."""

    name = "test-upblocks"
    targets_kind = TargetKind(
        component="unet",
        regex=r".*up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\.(to_k|to_v)",
        projections=("to_k", "to_v"),
        description="UNet up-block attn2.to_k/to_v",
    )
    calls: ClassVar[dict[str, int]] = {}

    @classmethod
    def claims_index(cls, model_index: dict[str, Any]) -> bool:
        return model_index.get(MARK) == "up-blocks"

    @classmethod
    def load(cls, source: Any, *, dtype: torch.dtype, revision: str | None) -> Any:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(source, dtype=dtype)
        pipe._fmn_test_family = True  # what claims() recognises
        return pipe

    @classmethod
    def claims(cls, pipe: Any) -> bool:
        return getattr(pipe, MARK, False) is True

    def targets(self):
        return {n: m for n, m in super().targets().items() if self.targets_kind.matches(n)}

    def architecture(self) -> str:
        return "test-upblocks-v1"

    @classmethod
    def serves_architecture(cls, architecture: str) -> bool:
        return architecture == "test-upblocks-v1"

    def _count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    def encode(self, prompts, batch_size=64):
        self._count("encode")
        return super().encode(prompts, batch_size)

    def denoise(self, x_t, t, cond):
        self._count("denoise")
        return super().denoise(x_t, t, cond)

    def text_states(self):
        self._count("text_states")
        return super().text_states()


@pytest.fixture
def third_family(pipeline_dirs, tmp_path, monkeypatch):
    """A folder the third family claims (the tiny SD-1 pipeline with a marker), and the family registered."""
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "upblocks"
    shutil.copytree(pipeline_dirs["sd1"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, MARK: "up-blocks"}))
    register_targets(UpBlockFamily.targets_kind)
    register_family(UpBlockFamily)
    UpBlockFamily.calls = {}
    yield folder
    unregister_family(UpBlockFamily)
    unregister_targets(UpBlockFamily.targets_kind)


def test_a_third_family_is_picked_up_everywhere(third_family):
    base = load_base(str(third_family))
    assert type(base.family) is UpBlockFamily and base.architecture == "test-upblocks-v1"
    up = set(base.family.targets())
    assert up and all(name.startswith("up_blocks.") for name in up)

    trained = train_patch(base, ["circle"], FAST, progress=False)
    assert set(trained.modules) == up and trained.info.architecture == "test-upblocks-v1"
    assert UpBlockFamily.calls["encode"] > 0 and UpBlockFamily.calls["denoise"] > 0

    edited = edit_patch(base, ["circle"], config=EditConfig(rank=2, bench="toy", vocab_words=10))
    assert set(edited.modules) == up and UpBlockFamily.calls["text_states"] > 0

    before = render(base)
    names = apply_patches(base, [trained, edited])
    assert not torch.equal(render(base), before)
    remove_patches(base, names)
    assert torch.equal(render(base), before)


def test_the_unet_family_keeps_its_own_folders(third_family, pipeline_dirs):
    assert type(load_base(str(pipeline_dirs["sd1"])).family) is UNetFamily


# ---------------------------------------------------------------------------------------- toy, by name or path
@pytest.mark.skipif(not (toy_pipeline_path() / "model_index.json").exists(), reason="toy model not built")
def test_toy_defaults_are_the_same_by_name_and_by_path(tmp_path, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path))
    by_name, by_path = load_base("toy"), load_base(str(toy_pipeline_path()))
    config = TrainConfig(steps=1, images_per_prompt=1, image_steps=2, batch_size=2)
    seen = []
    for base in (by_name, by_path):
        assert (base.bench, base.architecture, base.describe().model) == ("toy", "fmn-toy", "toy")
        trained = train_patch(base, ["bob"], config, progress=False)
        edited = edit_patch(base, ["bob", "circle"], config=EditConfig(rank=2))
        assert trained.info.config["bench"] == "toy" and trained.info.concepts[0].category == "identity"
        seen.append((trained.info.config["anchors"], edited.info.extra["anchors"], trained.tensor_hash()))
    assert seen[0] == seen[1]
    assert seen[0][0] == {"bob": "a person"} and seen[0][1] == {"bob": "a person", "circle": "shape"}


def test_a_copy_of_the_toy_is_still_the_toy_world(tmp_path):
    copy = tmp_path / "my-toy"
    shutil.copytree(toy_pipeline_path(), copy)
    base = load_base(str(copy))
    assert base.world is not None and base.bench == "toy" and base.describe().model == "toy"


# ------------------------------------------------------------------------------------------ the caller's state
def _state(base) -> dict[str, Any]:
    modules = {"denoiser": base.family.denoiser, **dict(enumerate(base.family.text_encoders()))}
    return {
        "rng": torch.get_rng_state(),
        "adapters": base.family.adapter_names(),
        "active": base.family.active_adapters(),
        "grad": {f"{k}.{n}": p.requires_grad for k, m in modules.items() for n, p in m.named_parameters()},
        "training": base.family.denoiser.training,
    }


def _same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert torch.equal(before["rng"], after["rng"]), "the global RNG state moved"
    assert (before["adapters"], before["active"]) == (after["adapters"], after["active"])
    changed = [k for k, v in before["grad"].items() if after["grad"].get(k) != v]
    assert not changed and before["grad"].keys() == after["grad"].keys(), changed[:5]
    assert before["training"] == after["training"]


@pytest.fixture
def busy(pipeline_dirs, tmp_path, monkeypatch):
    """A base as a user may hold it: two adapters of theirs loaded (one active), mixed requires_grad flags."""
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path))
    base = load_base(str(pipeline_dirs["sd1"]))
    mine = apply_patches(base, [random_patch(base, seed=5), random_patch(base, seed=6)])
    base.family.activate(mine[:1])
    for i, p in enumerate(base.family.denoiser.parameters()):
        p.requires_grad_(i % 3 == 0)
    torch.manual_seed(1234)
    return base


@pytest.mark.parametrize("call", ["train_patch", "edit_patch", "fuse_patches"])
def test_calls_leave_the_callers_state(busy, call):
    before = _state(busy)
    if call == "train_patch":
        train_patch(busy, ["circle"], FAST, progress=False)
    elif call == "edit_patch":
        edit_patch(busy, ["circle"], config=EditConfig(rank=2, bench="toy", vocab_words=10))
    else:
        fuse_patches(busy, [random_patch(busy, seed=7)])
    _same(before, _state(busy))


@pytest.mark.skipif(not toy_judge_path().exists(), reason="toy judge not built")
def test_run_attacks_leaves_the_callers_state(busy):
    from fmn_patch.toy.judge import ToyJudge

    config = AttackConfig(
        sampler=SamplerConfig(steps=2, seeds=(0,)),
        inversion=InversionAttackConfig(steps=2, images=2, batch_size=2),
        search=SearchConfig(max_candidates=4, batch_size=2, images=2),
        image_steps=2,
        grid_images=1,
    )
    before = _state(busy)
    run_attacks(busy, [random_patch(busy, seed=8)], "circle", ToyJudge.load(), load_bench("toy"), config)
    _same(before, _state(busy))


def test_train_restores_the_state_when_interrupted(busy, monkeypatch):
    import fmn_patch.methods.loop as loop

    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    before = _state(busy)
    monkeypatch.setattr(loop.torch.optim.AdamW, "step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_patch(busy, ["circle"], FAST, progress=False)
    _same(before, _state(busy))


def test_no_library_call_seeds_the_global_rng():
    """Only inside a fork (``torch.random.fork_rng``); the toy world's trainers are scripts, run as processes."""
    root = Path(__file__).parent.parent / "fmn_patch"
    scripts = {root / "toy" / n for n in ("train.py", "train_judge.py")}
    for path in set(root.rglob("*.py")) - scripts:
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.search(r"torch\.manual_seed\(", line):
                assert "fork_rng" in path.read_text(encoding="utf-8"), f"{path}: {line.strip()}"
