"""Attacks on forgetting: each one can succeed (on the toy base), budgets are honoured, results are deterministic,
and the CLI fails plainly on bad input."""

from __future__ import annotations

import json

import pytest
from conftest import random_patch
from PIL import Image

from fmn_patch.attacks import (
    AttackConfig,
    InversionAttackConfig,
    SearchConfig,
    inversion_attack,
    reference_latents,
    run_attacks,
    search_prompt,
)
from fmn_patch.cli.app import main
from fmn_patch.concepts.bench import load_bench
from fmn_patch.errors import FmnPatchError
from fmn_patch.evaluation.mscore import SamplerConfig
from fmn_patch.families.base import load_base
from fmn_patch.toy.judge import ToyJudge

FAST_SAMPLER = SamplerConfig(steps=6, seeds=(0,))
# Ten steps at a large learning rate are enough for one token on the toy base; 48 candidates find "circle".
FAST = AttackConfig(
    sampler=FAST_SAMPLER,
    inversion=InversionAttackConfig(steps=10, lr=5e-2, images=16),
    search=SearchConfig(max_candidates=48, images=8),
    image_steps=10,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FMNPATCH_CACHE", str(tmp_path_factory.getbasetemp() / "refcache"))


@pytest.fixture(scope="module")
def toy():
    return load_base("toy")


@pytest.fixture(scope="module")
def bench():
    return load_bench("toy")


@pytest.fixture(scope="module")
def judge():
    return ToyJudge.load()


@pytest.fixture
def circle_latents(toy, bench):
    return reference_latents(toy, bench.concept("circle"), bench, 16, steps=10, guidance=5.0)


def without_seconds(obj):
    if isinstance(obj, dict):
        return {k: without_seconds(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [without_seconds(v) for v in obj]
    return obj


def test_paraphrases_are_unseen_orders_of_known_words(toy, bench):
    for category, templates in bench.paraphrases.items():
        assert not set(templates) & set(bench.templates[category])
        concept = bench.of_category(category)[0]
        for prompt in bench.paraphrase_prompts(concept):
            for word in prompt.replace(",", " , ").split():  # every word is one token of the toy vocabulary
                assert len(toy.family.text.token_ids(word)) == 1, (prompt, word)
    prompts = bench.paraphrase_prompts(bench.concept("circle"))
    assert len(prompts) == 4 * 4 * 2 and "the disc is red" in prompts  # templates x colours x (name, alias)
    real = load_bench("real")
    assert set(real.paraphrases) == set(real.templates)


def test_every_attack_recovers_the_concept_from_the_base(toy, bench, judge):
    report = run_attacks(toy, [], "circle", judge, bench, FAST)
    assert report.models == ["base"]
    summary = report.summary()
    assert list(summary) == ["direct", "paraphrase", "inversion", "search"]
    # at FAST's 6 sampler steps the v2 base draws circle from paraphrases in 44% of images
    for attack, acc in summary.items():
        assert acc["base"] > 0.3, (attack, acc)
    data = json.loads(json.dumps(report.to_dict()))
    assert {"concept", "category", "bench", "patches", "sampler", "summary", "results", "seconds"} <= set(
        data
    )
    inversion = next(r for r in data["results"] if r["attack"] == "inversion")
    assert inversion["budget"]["steps"] == 10 and inversion["budget"]["images"] == 16
    assert inversion["budget"]["init_words"] == "shape"  # never the concept's own name
    search = next(r for r in data["results"] if r["attack"] == "search")
    assert search["details"]["candidates"] == 48 and search["prompts"] == [search["details"]["prompt"]]
    assert "| inversion |" in report.to_markdown() and isinstance(report.grid, Image.Image)


def test_inversion_runs_exactly_its_steps_and_is_deterministic(toy, bench, judge, circle_latents):
    config = InversionAttackConfig(steps=3, lr=5e-2, images=8)
    circle = bench.concept("circle")
    first, learned = inversion_attack(toy, circle, bench, judge, circle_latents, config, FAST_SAMPLER, seed=1)
    again, relearned = inversion_attack(  # a plain diffusers pipeline works too
        toy.pipe, circle, bench, judge, circle_latents, config, FAST_SAMPLER, seed=1
    )
    assert len(learned.losses) == 3 and learned.embeddings.shape == (1, 64)
    assert learned.embeddings.equal(relearned.embeddings)
    assert without_seconds(first.to_dict()) == without_seconds(again.to_dict())
    assert (
        first.prompts[0] == "a red <attack-circle>"
        and "<attack-circle>" not in toy.pipe.tokenizer.get_vocab()
    )


def test_search_honours_its_candidate_cap_and_is_deterministic(toy, circle_latents):
    config = SearchConfig(max_candidates=20, batch_size=8, images=4)
    found = search_prompt(toy, circle_latents, config, seed=3)
    again = search_prompt(toy.pipe, circle_latents, config, seed=3)  # a plain diffusers pipeline works too
    assert found.candidates == 20 and found.stopped == "candidates"
    assert (found.prompt, found.loss) == (again.prompt, again.loss) and len(found.prompt.split()) == 3
    assert found.loss <= found.start_loss


def test_search_stops_within_its_seconds(toy, circle_latents):
    config = SearchConfig(seconds=1.5, max_candidates=10**6, batch_size=4, images=4)
    found = search_prompt(toy, circle_latents, config)
    assert found.stopped == "seconds" and found.seconds < config.seconds + 0.5


def test_run_attacks_is_deterministic_and_leaves_the_pipeline_unpatched(sd1, judge, bench):
    patch = random_patch(sd1, concept="circle")
    before = sd1.family.identity.target_hash()
    config = AttackConfig(
        attacks=("inversion", "search"),  # the two with randomness of their own
        sampler=SamplerConfig(steps=2, seeds=(0,)),
        inversion=InversionAttackConfig(steps=2, images=4, batch_size=2),
        search=SearchConfig(max_candidates=12, batch_size=6, images=2),
        image_steps=2,
        grid_images=2,
    )
    first = run_attacks(sd1, [patch], "disc", judge, bench, config)
    again = run_attacks(sd1, [patch], "circle", judge, bench, config)
    assert first.models == ["base", "patched"] and first.concept.name == "circle"
    assert without_seconds(first.to_dict()) == without_seconds(again.to_dict())
    assert sd1.family.identity.target_hash() == before and not getattr(sd1.pipe.unet, "peft_config", None)


def test_bad_configs_name_the_value():
    with pytest.raises(FmnPatchError, match="unknown attack"):
        AttackConfig(attacks=("nope",))  # type: ignore[arg-type]
    with pytest.raises(FmnPatchError, match="inversion steps=0"):
        InversionAttackConfig(steps=0)
    with pytest.raises(FmnPatchError, match="search seconds=-1"):
        SearchConfig(seconds=-1)


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concept", "zebra"], "choose one of circle"),
        (["--concept", "circle", "--attack", "nope"], "choose from paraphrase, inversion, search"),
        (["--concept", "circle", "--inversion-steps", "0"], "inversion steps=0"),
        (["--concept", "circle", "--search-seconds", "-1"], "search seconds=-1"),
        (["--concept", "circle", "--seeds", "0"], "seeds=0 must be a whole number"),
        ([], "--concept"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(capsys, args, message):
    code, out, err = run(capsys, "attack", "toy", *args)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_json_run_with_a_third_party_lora(capsys, toy, tmp_path):
    lora = random_patch(toy, concept="circle").save(tmp_path / "lora.safetensors")
    args = ["--concept", "circle", "--attack", "search", "--search-candidates", "8", "--steps", "2"]
    folder = tmp_path / "attack"
    code, out, _ = run(
        capsys,
        "attack",
        "toy",
        "--lora",
        str(lora),
        *args,
        "--seeds",
        "1",
        "--no-base",
        "--out",
        str(folder),
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["patches"] == [str(lora)] and list(data["summary"]) == ["direct", "search"]
    assert set(data["summary"]["search"]) == {"patched"}
    assert data["results"][1]["details"]["candidates"] == 8
    assert sorted(p.name for p in folder.iterdir()) == ["attack.json", "attack.md", "attack.png"]
    assert json.loads((folder / "attack.json").read_text()) == data
    code, _, err = run(capsys, "attack", "toy", "--lora", str(lora), *args, "--out", str(folder))
    assert code == 2 and "--overwrite" in err


def test_cli_help_has_examples(capsys):
    code, out, _ = run(capsys, "attack", "--help")
    assert code == 0 and "Examples" in out and "fmnpatch attack toy" in out
