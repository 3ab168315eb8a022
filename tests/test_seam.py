"""The family seam holds and calls leave the caller's state as they found it.

- A third family, defined and registered here and nowhere else from the role base classes alone (it shares no
  code with the UNet family), is picked up by ``load_base``, ``train_patch``, ``edit_patch``, ``apply_patches``,
  ``remove_patches`` and ``evaluate_patches``: the methods ask the family, not the UNet.
- The toy base named ``toy`` and the same folder given by its path get the same defaults.
- ``train_patch``, ``edit_patch``, ``fuse_patches`` and ``run_attacks`` leave the global RNG state, the active
  adapters and every ``requires_grad`` flag as they were; the library seeds the global RNG only inside a fork.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import random_patch, render
from torch import nn

from fmn_patch import (
    AttackConfig,
    EditConfig,
    InversionAttackConfig,
    SamplerConfig,
    SearchConfig,
    TrainConfig,
    apply_patches,
    edit_patch,
    evaluate_patches,
    fuse_patches,
    load_base,
    load_bench,
    remove_patches,
    run_attacks,
    to_kohya,
    train_patch,
)
from fmn_patch.errors import FmnPatchError
from fmn_patch.families import (
    Adapters,
    Conditioning,
    Family,
    Identity,
    Images,
    Noise,
    Text,
    register_family,
    unregister_family,
)
from fmn_patch.families.capture import capture_cross_attention
from fmn_patch.families.encoding import TextStates
from fmn_patch.format.targets import TargetKind, register_targets, unregister_targets
from fmn_patch.toy import toy_judge_path, toy_pipeline_path
from fmn_patch.toy.judge import ToyJudge

FAST = TrainConfig(steps=2, images_per_prompt=1, image_steps=2, batch_size=2, bench="toy")
MARK = "_fmn_test_family"
ROLES = ("text", "noise", "images", "adapters", "identity")


# ------------------------------------------------------------------------------------------- a third family
# A family written from the role base classes alone: no UNetFamily, no UNet role, nothing from families/unet*.py.
# It wraps the tiny SD-1 pipeline (a real diffusers pipeline built from a config) under its own folder marker, its
# own ModelSpec id, its own text encoding and its own targets (only the decoder half's cross-attention), so a method
# that asked the UNet family, or the pipeline, instead of the family in hand would train, hash or stack the wrong
# layers. Every role answer a method asks for is counted.
UP_TARGETS = TargetKind(
    component="unet",
    regex=r".*up_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\.(to_k|to_v)",
    projections=("to_k", "to_v"),
    description="UNet up-block attn2.to_k/to_v",
)
CALLS: dict[str, int] = {}


def _count(what: str) -> None:
    CALLS[what] = CALLS.get(what, 0) + 1


class UpAdapters(Adapters):
    component = "unet"
    targets_kind = UP_TARGETS

    def targets(self) -> dict[str, nn.Linear]:
        _count("targets")
        found = {}
        for name, module in self.denoiser.named_modules():
            if self.is_target(name):
                found[name] = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        return found


class UpText(Text):
    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer

    @torch.no_grad()
    def encode(self, prompts, batch_size=64) -> Conditioning:
        _count("encode")
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return Conditioning(self.pipe.text_encoder(ids.to(self.family.adapters.device))[0])

    def text_states(self) -> TextStates:
        _count("text_states")
        return TextStates(self.tokenizer, [(self.pipe.text_encoder, self.tokenizer, None)])

    def text_encoders(self) -> list[nn.Module]:
        return [self.pipe.text_encoder]


class UpNoise(Noise):
    def add_noise(self, x0, noise, t):
        return self.pipe.scheduler.add_noise(x0, noise, t)

    def target(self, x0, noise, t):
        return noise  # the tiny SD-1 pipeline predicts eps

    def denoise(self, x_t, t, cond):
        _count("denoise")
        return self.family.adapters.denoiser(x_t, t, encoder_hidden_states=cond.states).sample

    def capture_attention(self, sink):
        _count("capture_attention")
        return capture_cross_attention(self.family.adapters.denoiser, sink, "attn2")


class UpImages(Images):
    def pixel_size(self) -> int:
        return int(self.family.adapters.denoiser.config.sample_size) * int(self.pipe.vae_scale_factor)

    def draw(self, pairs, **kwargs):
        _count("draw")
        return super().draw(pairs, **kwargs)


class UpIdentity(Identity):
    kohya_form = False

    def architecture(self) -> str:
        return "test-upblocks-v1"

    @classmethod
    def serves_architecture(cls, architecture: str) -> bool:
        return architecture == "test-upblocks-v1"

    @classmethod
    def kohya_names(cls, modules, architecture, **layout):
        raise FmnPatchError("no kohya form for the test family")

    @classmethod
    def kohya_version(cls, architecture: str) -> str:
        return "test"


class UpBlockFamily(Family):
    name = "test-upblocks"
    text_role = UpText
    noise_role = UpNoise
    images_role = UpImages
    adapters_role = UpAdapters
    identity_role = UpIdentity

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


def test_the_third_family_shares_no_code_with_the_unet_family():
    unet_modules = {"fmn_patch.families.unet", "fmn_patch.families.unet_text"}
    for cls in (UpBlockFamily, *(getattr(UpBlockFamily, f"{r}_role") for r in ROLES)):
        assert not {k.__module__ for k in cls.__mro__} & unet_modules, cls
    imported = {
        n.module for n in ast.walk(ast.parse(Path(__file__).read_text())) if isinstance(n, ast.ImportFrom)
    }
    assert not imported & unet_modules


@pytest.fixture
def third_family(pipeline_dirs, tmp_path, monkeypatch):
    """A folder the third family claims (the tiny SD-1 pipeline with a marker), and the family registered."""
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "upblocks"
    shutil.copytree(pipeline_dirs["sd1"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, MARK: "up-blocks"}))
    register_targets(UP_TARGETS)
    register_family(UpBlockFamily)
    CALLS.clear()
    yield folder
    unregister_family(UpBlockFamily)
    unregister_targets(UP_TARGETS)


def test_a_third_family_is_picked_up_everywhere(third_family):
    base = load_base(str(third_family))
    assert type(base.family) is UpBlockFamily and base.architecture == "test-upblocks-v1"
    up = set(base.family.adapters.targets())
    assert up and all(name.startswith("up_blocks.") for name in up)

    trained = train_patch(base, ["circle"], FAST, progress=False)
    assert set(trained.modules) == up and trained.info.architecture == "test-upblocks-v1"
    assert trained.info.base_hash == base.family.identity.target_hash()
    assert CALLS["encode"] and CALLS["denoise"] and CALLS["capture_attention"] and CALLS["draw"]

    edited = edit_patch(base, ["circle"], config=EditConfig(rank=2, bench="toy", vocab_words=10))
    assert set(edited.modules) == up and CALLS["text_states"]

    before = render(base)
    names = apply_patches(base, [trained, edited])
    assert not torch.equal(render(base), before)
    remove_patches(base, names)
    assert torch.equal(render(base), before)

    draws = CALLS["draw"]
    sampler = SamplerConfig(steps=2, guidance=3.0, seeds=(0,))
    report = evaluate_patches(
        base, [trained], load_bench("toy"), ToyJudge.load(), sampler, concepts=["circle"]
    )
    assert report.to_dict()["models"][1]["erased"] == ["circle"] and CALLS["draw"] > draws
    assert not base.family.adapters.adapter_names() and torch.equal(render(base), before)
    with pytest.raises(FmnPatchError, match="no kohya form"):
        to_kohya(trained)


def test_the_unet_family_keeps_its_own_folders(third_family, pipeline_dirs):
    assert load_base(str(pipeline_dirs["sd1"])).family.name == "unet"


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
    modules = {"denoiser": base.family.adapters.denoiser, **dict(enumerate(base.family.text.text_encoders()))}
    return {
        "rng": torch.get_rng_state(),
        "adapters": base.family.adapters.adapter_names(),
        "active": base.family.adapters.active_adapters(),
        "grad": {f"{k}.{n}": p.requires_grad for k, m in modules.items() for n, p in m.named_parameters()},
        "training": base.family.adapters.denoiser.training,
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
    base.family.adapters.activate(mine[:1])
    for i, p in enumerate(base.family.adapters.denoiser.parameters()):
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


#: Calls that seed a global RNG.
SEEDERS = {
    "torch.manual_seed",
    "torch.random.manual_seed",
    "torch.cuda.manual_seed",
    "torch.cuda.manual_seed_all",
    "random.seed",
    "np.random.seed",
    "numpy.random.seed",
}


def _unforked_seeds(tree: ast.AST) -> list[int]:
    """Lines of global-RNG seeding calls that are not inside a ``with ...fork_rng(...)`` block."""
    found: list[int] = []

    def visit(node: ast.AST, forked: bool) -> None:
        if isinstance(node, ast.With) and any(
            isinstance(item.context_expr, ast.Call)
            and ast.unparse(item.context_expr.func).endswith("fork_rng")
            for item in node.items
        ):
            forked = True
        if isinstance(node, ast.Call) and ast.unparse(node.func) in SEEDERS and not forked:
            found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, forked)

    visit(tree, False)
    return found


def test_no_library_call_seeds_the_global_rng():
    """Only inside a fork (``torch.random.fork_rng``); the toy world's trainers are scripts, run as processes."""
    example = "torch.manual_seed(0)\nwith torch.random.fork_rng(devices=[]):\n    torch.manual_seed(1)\n"
    assert _unforked_seeds(ast.parse(example)) == [1]
    root = Path(__file__).parent.parent / "fmn_patch"
    scripts = {root / "toy" / n for n in ("train.py", "train_judge.py")}
    for path in sorted(set(root.rglob("*.py")) - scripts):
        lines = _unforked_seeds(ast.parse(path.read_text(encoding="utf-8")))
        assert not lines, (
            f"{path.relative_to(root)}:{lines[0]} seeds the global RNG outside torch.random.fork_rng"
        )
