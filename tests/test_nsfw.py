"""The NSFW preset (data, edit/train inputs, CLI) and the NudeNet score of images."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
from PIL import Image
from test_cli import run

from fmn_patch.concepts.bench import Concept, load_bench
from fmn_patch.concepts.presets import PRESET_DIR, Preset, known_presets, load_preset, preset_concepts
from fmn_patch.concepts.prompts import plan, preserve_prompts, resolve
from fmn_patch.errors import FmnPatchError
from fmn_patch.evaluation.nsfw import NUDITY_CLASSES, NsfwReport, evaluate_nsfw, load_detector, nsfw_rate
from fmn_patch.families.tokens import concept_ids, place
from fmn_patch.format import Patch
from fmn_patch.methods.edit import EditConfig, edit_patch, erase_prompts
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.testing.tiny import write_tokenizer
from fmn_patch.toy.world import dataset


@pytest.fixture(scope="module")
def preset() -> Preset:
    return load_preset("nsfw")


def toy_images(n: int = 4) -> torch.Tensor:
    """(n, 3, 32, 32) in [0, 1]: rendered toy-world scenes (shapes and figures, no nudity)."""
    images, _ = dataset(n, seed=0)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


class FakeDetector:
    """Returns the given detections per call, in order, and records what it was shown."""

    def __init__(self, per_image: list[list[tuple[str, float]]]) -> None:
        self.per_image, self.seen = per_image, []

    def detect(self, image):
        self.seen.append(image)
        return [{"class": c, "score": s, "box": [0, 0, 1, 1]} for c, s in self.per_image[len(self.seen) - 1]]


# ------------------------------------------------------------------------------------------------ the preset
def test_the_preset_loads_with_its_terms_templates_and_prompts(preset):
    assert "nsfw" in known_presets() and preset.name == "nsfw" and preset.category == "nsfw"
    assert {"nudity", "sexual", "pornography"} <= set(preset.terms)
    assert {"nude", "naked", "porn"} <= set(preset.words)
    assert preset.anchor == "fully clothed" and len(preset.templates) >= 8 and len(preset.eval_prompts) >= 8
    assert (PRESET_DIR / "nsfw" / "README.md").is_file()
    text = (PRESET_DIR / "nsfw" / "preset.json").read_text().lower()
    for word in ("child", "teen", "girl", "boy", "kid", "minor", "young"):  # reviewed: no minors anywhere
        assert word not in text


def test_every_word_is_placeable_in_every_template_prompt(preset, tmp_path):
    tokenizer = write_tokenizer(tmp_path)  # the CLIP tokenizer of the tiny pipelines
    for word in preset.words:
        prompts = preset.prompts(word)
        assert len(prompts) == len(preset.templates) and all(word in p for p in prompts)
        for prompt in prompts:
            placement = place(tokenizer, prompt, word)
            ids = tuple(placement.ids[i] for i in placement.concept)
            assert ids == concept_ids(tokenizer, word) and placement.length < tokenizer.model_max_length


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(FmnPatchError, match="unknown preset 'nosuch'; known presets: nsfw"):
        load_preset("nosuch")


def test_a_preset_from_a_json_file_and_its_checks(tmp_path, preset):
    data = json.loads((PRESET_DIR / "nsfw" / "preset.json").read_text())
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({**data, "name": "mine", "terms": [{"name": "nudity", "aliases": ["nude"]}]}))
    assert load_preset(path).terms == ("nudity",) and load_preset(str(path)).aliases == {"nudity": ("nude",)}
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "templates"}))
    with pytest.raises(FmnPatchError, match="lacks the field 'templates'"):
        load_preset(path)
    with pytest.raises(FmnPatchError, match="needs one slot"):
        dataclasses.replace(preset, templates=("a photo of {}",))
    with pytest.raises(FmnPatchError, match=r"contains \['nude'\]"):
        dataclasses.replace(preset, anchor="a nude person")
    with pytest.raises(FmnPatchError, match=r"repeated: \['nude'\]"):
        dataclasses.replace(preset, aliases={**preset.aliases, "topless": ("nude",)})


def test_more_terms_join_the_preset(preset):
    more = preset.with_terms(["boudoir=boudoir photo", "nude=in the nude", "nudity"])
    assert more.terms == (*preset.terms, "boudoir") and more.aliases["boudoir"] == ("boudoir photo",)
    assert more.aliases["nudity"] == (*preset.aliases["nudity"], "in the nude")  # an alias names its term


# ------------------------------------------------------------------------------------------- edit and train
def test_preset_concepts_carry_aliases_templates_and_anchor(preset):
    concepts = preset_concepts(preset)
    assert [c.name for c in concepts] == list(preset.terms)
    nudity = concepts[0]
    assert nudity.category == "nsfw" and nudity.anchor == "fully clothed" and "naked" in nudity.aliases
    assert preset_concepts(preset, anchor="")[0].anchor == ""
    triples = list(erase_prompts(nudity, "fully clothed", load_bench("real")))
    assert ("a woman on a beach, naked", "naked", "a woman on a beach, fully clothed") in triples
    assert len(triples) == len(nudity.names) * (len(preset.templates) + 1)  # + the bare name
    with pytest.raises(FmnPatchError, match="needs one slot"):
        Concept("nudity", "nsfw", templates=("a photo",))


def test_edit_patch_with_the_preset_lists_its_concepts_as_nsfw(sd1, preset, tmp_path):
    patch = edit_patch(sd1, preset_concepts(preset), config=EditConfig(rank=2))
    patch = Patch.load(patch.save(tmp_path / "nsfw.safetensors"))
    assert [(c.name, c.category) for c in patch.info.concepts] == [(t, "nsfw") for t in preset.terms]
    extra = patch.info.extra
    assert set(extra["anchors"].values()) == {"fully clothed"} and extra["aliases"]["nudity"][0] == "nude"
    assert extra["prompts_skipped"] == [] and extra["rows"]["erase"] > 0 and 0 <= extra["residual"] < 1


def test_preset_concepts_plan_their_own_prompts_on_any_bench(preset):
    bench = load_bench("toy")
    concepts = preset_concepts(preset)
    assert [c.name for c in concepts] == list(preset.terms) and {c.category for c in concepts} == {"nsfw"}
    assert preset_concepts(preset, anchor="x")[0].anchor == "x"  # the user's anchor wins
    (concept,) = resolve([concepts[0]], bench)
    assert concept.aliases == preset.aliases["nudity"]
    pl = plan(concept, bench)
    assert (
        pl.prompts == tuple(preset.prompts("nudity"))
        and pl.anchor_prompts[2] == "a woman on a beach, fully clothed"
    )
    keep = preserve_prompts(bench, [concept], last=pl.anchor_prompts)
    assert "a picture of a red circle" in keep and not any(
        "naked" in p for p in keep
    )  # toy bench still preserved


def test_train_patch_with_the_preset(pipeline_dirs, preset, tmp_path, monkeypatch):
    from fmn_patch.families.base import load_base

    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path))
    small = dataclasses.replace(preset, terms=("nudity",), aliases={}, templates=preset.templates[:2])
    fast = TrainConfig(steps=2, images_per_prompt=1, image_steps=1, batch_size=1, rank=2, bench="toy")
    pipe = load_base(str(pipeline_dirs["sd1"]))
    patch = train_patch(pipe, preset_concepts(small), fast, progress=False)
    assert [(c.name, c.category) for c in patch.info.concepts] == [("nudity", "nsfw")]
    assert patch.info.config["anchors"] == {"nudity": "fully clothed"}


# ------------------------------------------------------------------------------------------------ the score
def test_nsfw_rate_counts_images_and_classes():
    fake = FakeDetector(
        [
            [("FEMALE_BREAST_EXPOSED", 0.9), ("FACE_FEMALE", 0.8)],
            [("BUTTOCKS_EXPOSED", 0.3)],  # below the threshold
            [("FEET_EXPOSED", 0.7)],  # exposed, but not nudity
            [],
        ]
    )
    report = nsfw_rate(toy_images(4), fake, threshold=0.5)
    assert report.images == 4 and report.flags == (True, False, False, False) and report.rate == 0.25
    assert report.counts == {"FACE_FEMALE": 1, "FEET_EXPOSED": 1, "FEMALE_BREAST_EXPOSED": 1}
    image = fake.seen[0]
    assert image.shape == (32, 32, 3) and image.dtype.name == "uint8" and image.flags["C_CONTIGUOUS"]
    rgb = (toy_images(1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert (image == rgb[..., ::-1]).all()  # BGR, as cv2.imread gives NudeNet
    assert json.loads(json.dumps(report.to_dict()))["flagged"] == 1


def test_nsfw_rate_refuses_bad_inputs():
    fake = FakeDetector([[]])
    with pytest.raises(FmnPatchError, match=r"threshold=1\.5"):
        nsfw_rate(toy_images(1), fake, threshold=1.5)
    with pytest.raises(FmnPatchError, match=r"give \(N, 3, H, W\)"):
        nsfw_rate(torch.zeros(3, 32, 32), fake)
    with pytest.raises(FmnPatchError, match="no images"):
        nsfw_rate([], fake)


def test_nudenet_scores_toy_world_images():
    detector = load_detector()  # nudenet is a dev dependency; its ONNX model ships in the wheel
    images = toy_images(4)
    report = nsfw_rate(images, detector)
    assert report.images == 4 and report.threshold == 0.5
    assert report.rate == sum(report.flags) / 4  # toy shapes: NudeNet is expected to find no nudity
    assert report.rate == 0.0
    assert set(report.counts) <= set(_nudenet_labels()) and set(NUDITY_CLASSES) <= set(_nudenet_labels())
    pil = [Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()) for x in images]
    assert nsfw_rate(pil, detector).detections == report.detections  # PIL images read the same


def _nudenet_labels() -> list[str]:
    import nudenet.nudenet as module

    return getattr(module, "__labels")


def test_missing_nudenet_tells_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)  # import nudenet now raises ImportError
    with pytest.raises(FmnPatchError, match=r"pip install 'fmn-patch\[nsfw\]'"):
        load_detector()
    with pytest.raises(FmnPatchError, match=r"fmn-patch\[nsfw\]"):
        nsfw_rate(toy_images(1))


def test_evaluate_nsfw_draws_every_prompt_and_seed(sd1, preset):
    fake = FakeDetector([[("FEMALE_GENITALIA_EXPOSED", 0.6)]] + [[]] * 5)
    report = evaluate_nsfw(sd1, preset.eval_prompts[:3], seeds=(0, 1), steps=1, detector=fake, progress=False)
    assert isinstance(report, NsfwReport) and report.images == 6 and report.rate == pytest.approx(1 / 6)
    assert report.prompts == tuple(p for p in preset.eval_prompts[:3] for _ in (0, 1))
    assert report.to_dict()["per_image"][0]["prompt"] == preset.eval_prompts[0]
    sd1.pipe.safety_checker = object()
    with pytest.raises(FmnPatchError, match="safety_checker=None"):
        evaluate_nsfw(sd1, detector=fake)


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("command", ["edit", "train"])
def test_cli_unknown_preset_is_one_line(capsys, tmp_path, command):
    code, out, err = run(capsys, command, "--preset", "nosuch", "-o", str(tmp_path / "p.safetensors"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "unknown preset 'nosuch'; known presets: nsfw" in err


@pytest.mark.parametrize("command", ["edit", "train"])
def test_cli_preset_refuses_a_category(capsys, tmp_path, command):
    args = [command, "--preset", "nsfw", "--category", "object", "-o", str(tmp_path / "p.safetensors")]
    code, _, err = run(capsys, *args)
    assert code == 2 and "--category does not combine with --preset" in err


def test_cli_edit_preset_writes_an_nsfw_patch(capsys, pipeline_dirs, tmp_path, preset):
    out_path = tmp_path / "nsfw.safetensors"
    args = ["edit", "boudoir", "--preset", "nsfw", "--base", str(pipeline_dirs["sd1"]), "--rank", "2"]
    code, out, err = run(capsys, *args, "-o", str(out_path), "--json")
    assert code == 0, err
    assert json.loads(out)["concepts"] == [*preset.terms, "boudoir"]
    patch = Patch.load(out_path)
    assert {c.category for c in patch.info.concepts} == {"nsfw"}
    assert patch.info.extra["anchors"]["boudoir"] == "fully clothed"
