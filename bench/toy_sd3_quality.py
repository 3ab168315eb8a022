"""Forgetting on the toy MMDiT (`toy-sd3`) beside the UNet toy (`toy`), judged alike, in one run.

    python bench/toy_sd3_quality.py                       # every concept alone, five at once, --robust on circle
    python bench/toy_sd3_quality.py --models toy-sd3 --concepts circle bob striped --no-robust
    python bench/toy_sd3_quality.py --models toy --part unet &   # one model per core, then:
    python bench/toy_sd3_quality.py --models toy-sd3 --part mmdit; python bench/toy_sd3_quality.py --merge unet mmdit

For each model: the base's scores on ConceptBench-toy, then a re-steering patch (`train_patch`, default config)
per concept and one for five concepts at once: Acc_erased, alias Acc_erased, Acc_kept relative to the base, train
time and patch size. With robust (default, circle): Concept Inversion (the harness's default budget, learned on
the base's own images of the concept, a token in every text encoder) against the base, the plain patch and a
`--robust 4` patch (refused on toy-sd3, see bench/mmdit_robust.py: the row then records the refusal). Also
measures, on the toy MMDiT, how much the text stream's K/V inputs move with the timestep and with the image at each
block (what a closed-form edit would have to ignore). Writes
bench/results/toy_sd3_quality.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from record import save, write_json
from render import write_markdown

from fmn_patch import apply_patches, load_base, remove_patches
from fmn_patch.attacks import InversionAttackConfig, inversion_attack, reference_latents
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.concepts.bench import load_bench
from fmn_patch.concepts.prompts import plan
from fmn_patch.errors import FmnPatchError
from fmn_patch.evaluation.mscore import ModelScore, SamplerConfig, acc_kept, evaluate
from fmn_patch.families.joint import recorded_inputs
from fmn_patch.format import Patch
from fmn_patch.methods.resteer import TrainConfig, train_patch
from fmn_patch.toy.judge import ToyJudge

FIVE = ["circle", "square", "bob", "striped", "star"]


def scored(
    pipe: Any,
    model: str,
    patch: Patch,
    erased: list[str],
    world: dict[str, Any],
    base: ModelScore,
    seconds: float,
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        size = patch.save(Path(tmp) / "p.safetensors").stat().st_size
    names = apply_patches(pipe, [patch])
    try:
        score = evaluate(
            pipe, world["bench"], world["judge"], world["sampler"], erased=erased, progress=False
        )
    finally:
        remove_patches(pipe, names)
    kept_base = acc_kept(base.concepts, erased)
    rows = []
    for concept in erased:
        c = score.concepts[concept]
        rows.append(
            {
                "model": model,
                "concept": concept if len(erased) == 1 else f"{concept} (of {len(erased)})",
                "erased": erased,
                "base_acc": base.concepts[concept].acc,
                "acc": c.acc,
                "alias_acc": c.alias_acc,
                "acc_kept": score.acc_kept,
                "kept_ratio": (score.acc_kept or 0.0) / kept_base if kept_base else None,
                "train_s": seconds,
                "patch_bytes": size,
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def trained(pipe: Any, concepts: list[str], config: TrainConfig) -> tuple[Patch, float]:
    started = time.perf_counter()
    patch = train_patch(pipe, concepts, config, progress=False)
    return patch, time.perf_counter() - started


def robust(pipe: Any, model: str, concept: str, world: dict[str, Any], base: ModelScore) -> dict[str, Any]:
    bench, judge, sampler = world["bench"], world["judge"], world["sampler"]
    attack = InversionAttackConfig()
    latents = reference_latents(pipe, bench.concept(concept), bench, attack.images, steps=20, guidance=5.0)

    def inverted() -> float:
        result, _ = inversion_attack(
            pipe, bench.concept(concept), bench, judge, latents, attack, sampler, seed=0
        )
        return result.acc

    out: dict[str, Any] = {"model": model, "concept": concept, "attack": dataclasses.asdict(attack)}
    out["base_inversion_acc"] = inverted()
    plain = TRAIN[0]
    for label, config in (
        ("plain", plain),
        ("robust", dataclasses.replace(plain, robust_rounds=4)),  # the --robust default budget
    ):
        if config.robust_rounds:
            try:
                pipe.family.require_robust()
            except FmnPatchError as e:  # MMDiT: measured not to hold (bench/mmdit_robust.py)
                out["robust_refused"] = str(e)
                continue
        patch, seconds = trained(pipe, [concept], config)
        names = apply_patches(pipe, [patch])
        try:
            score = evaluate(pipe, bench, judge, sampler, erased=[concept], progress=False)
            acc = inverted()
        finally:
            remove_patches(pipe, names)
        key = "" if label == "robust" else "plain_"
        out[f"{key}inversion_acc"] = acc
        out[f"{key}acc"] = score.concepts[concept].acc
        kept_base = acc_kept(base.concepts, [concept])
        out[f"{key}kept_ratio"] = (score.acc_kept or 0.0) / kept_base if kept_base else None
        out[f"{key}train_s"] = seconds
        print(out, file=sys.stderr, flush=True)
    return out


@torch.no_grad()
def dependence(pipe: Any, prompts: list[str], latents: torch.Tensor) -> list[dict[str, Any]]:
    """Per block: how far each token's K/V input moves from its mean over draws, relative to its size, for the same
    prompts over timesteps (one image) and over images (one timestep): mean |x - mean(x)| / mean |x| over tokens."""
    family = pipe.family
    cond = family.text.encode(prompts)
    first = {n: m for n, m in family.adapters.targets().items() if n.endswith("add_k_proj")}

    def record(x0: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        with recorded_inputs(first) as rec:
            family.noise.denoise(family.noise.add_noise(x0, noise, t), t, cond)
        return {n: v[0] for n, v in rec.items()}  # (P, T, D)

    n = len(prompts)
    one = latents[:1].expand(n, *latents.shape[1:])
    over_t = [record(one, torch.full((n,), t)) for t in (50, 250, 500, 750, 950)]
    over_x = [
        record(latents[i : i + 1].expand(n, *latents.shape[1:]), torch.full((n,), 500)) for i in range(5)
    ]

    def spread(draws: list[dict[str, torch.Tensor]], name: str) -> float:
        x = torch.stack([d[name] for d in draws])  # (draws, P, T, D)
        return float((x - x.mean(0)).norm(dim=-1).mean() / x.norm(dim=-1).mean())

    return [
        {
            "block": name.removesuffix(".attn.add_k_proj"),
            "timestep": spread(over_t, name),
            "image": spread(over_x, name),
        }
        for name in first
    ]


@torch.no_grad()
def pooled(pipe: Any, concept: str, world: dict[str, Any]) -> dict[str, Any]:
    """What the pooled CLIP embedding carries: the concept's bench prompts drawn with the text states (what every
    block's add_k/add_v reads) and the pooled embedding (the timestep modulation, which no K/V patch touches) taken
    from the concept's prompt or from its anchor's, each mixed with the other. Acc: the share judged to show the
    concept. "states anchor, pooled concept" is what an ideal K/V redirect to the anchor would leave."""
    bench, judge, sampler = world["bench"], world["judge"], world["sampler"]
    item = plan(bench.concept(concept), bench)
    family, n = pipe.family, len(item.prompts)
    c, a = family.text.encode(list(item.prompts)), family.text.encode(list(item.anchor_prompts))
    empty = family.text.encode([""] * n)
    classes = judge.classes(item.concept.category)
    out: dict[str, Any] = {"concept": concept, "anchor": item.anchor}
    for label, states, pool in (
        ("both concept", c, c),
        ("states concept, pooled anchor", c, a),
        ("states anchor, pooled concept", a, c),
        ("both anchor", a, a),
    ):
        shown = 0
        for seed in sampler.seeds:
            images = pipe.pipe(
                prompt_embeds=states.states,
                pooled_prompt_embeds=pool.added["pooled"],
                negative_prompt_embeds=empty.states,
                negative_pooled_prompt_embeds=empty.added["pooled"],
                num_inference_steps=sampler.steps,
                guidance_scale=sampler.guidance,
                generator=[torch.Generator().manual_seed(seed) for _ in range(n)],
                output_type="pt",
                **family.images.sampler_kwargs(),
            ).images
            top = judge.category_probs(images.float().cpu(), item.concept.category).argmax(-1)
            shown += sum(classes[int(i)] == concept for i in top)
        out[label] = shown / (n * len(sampler.seeds))
    print(out, file=sys.stderr, flush=True)
    return out


TRAIN = [TrainConfig()]  # the plain patches' config (main() applies --steps / --batch-size)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["toy", "toy-sd3"])
    parser.add_argument("--concepts", nargs="+", default=None, help="one patch each (default: every concept)")
    parser.add_argument("--seeds", type=int, default=3, help="sampler seeds per bench prompt")
    parser.add_argument("--no-five", action="store_true")
    parser.add_argument("--no-robust", action="store_true")
    parser.add_argument("--robust-concept", default="circle")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--part", default=None, help="write toy_sd3_quality.PART.json (merge the parts later)"
    )
    parser.add_argument("--merge", nargs="+", default=None, help="combine these parts into one result")
    parser.add_argument("--steps", type=int, default=None, help="train steps (default: TrainConfig's)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="train batch size (default: TrainConfig's)"
    )
    args = parser.parse_args()
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v is not None}
    TRAIN[0] = TrainConfig(**overrides)
    if args.merge:
        merge(args.merge)
        return
    torch.set_num_threads(args.threads)
    quiet_libraries()
    bench = load_bench("toy")
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=tuple(range(args.seeds)))
    world: dict[str, Any] = {"bench": bench, "judge": ToyJudge.load(), "sampler": sampler}
    concepts = args.concepts or bench.names
    rows: list[dict[str, Any]] = []
    robust_rows: list[dict[str, Any]] = []
    bases: dict[str, Any] = {}
    deps: list[dict[str, Any]] = []
    carried: list[dict[str, Any]] = []
    for model in args.models:
        pipe = load_base(model)
        base = evaluate(pipe, bench, world["judge"], sampler, progress=False)
        bases[model] = {
            "acc_kept": base.acc_kept,
            "concepts": {n: s.to_dict() for n, s in base.concepts.items()},
        }
        for concept in concepts:
            patch, seconds = trained(pipe, [concept], TRAIN[0])
            rows += scored(pipe, model, patch, [concept], world, base, seconds)
        if not args.no_five:
            patch, seconds = trained(pipe, FIVE, TRAIN[0])
            rows += scored(pipe, model, patch, FIVE, world, base, seconds)
        if not args.no_robust:
            robust_rows.append(robust(pipe, model, args.robust_concept, world, base))
        if pipe.family.adapters.component == "transformer":
            carried = [pooled(pipe, c, world) for c in ("circle", "bob", "striped")]
            latents = reference_latents(pipe, bench.concept("circle"), bench, 5, steps=20, guidance=5.0)
            deps = dependence(
                pipe, bench.prompts(bench.concept("bob")) + bench.prompts(bench.concept("circle")), latents
            )
    save(
        f"toy_sd3_quality.{args.part}" if args.part else "toy_sd3_quality",
        {
            "models": args.models,
            "sampler": {"steps": sampler.steps, "guidance": sampler.guidance, "seeds": list(sampler.seeds)},
            "train_config": dataclasses.asdict(TRAIN[0]),
            "bases": bases,
            "rows": rows,
            "robust": robust_rows,
            "dependence": deps,
            "pooled": carried,
        },
    )
    if not args.part:
        write_markdown()


def merge(parts: list[str]) -> None:
    """One result from parts run side by side (same sampler and train config), in the order given."""
    import json

    from record import RESULTS

    records = [json.loads((RESULTS / f"toy_sd3_quality.{p}.json").read_text()) for p in parts]
    first = records[0]["result"]
    for record in records[1:]:
        for key in ("sampler", "train_config"):
            if record["result"][key] != first[key]:
                raise SystemExit(f"the parts differ in {key}; rerun them with the same options")
    merged = dict(first)
    for key in ("models", "rows", "robust"):
        merged[key] = [x for r in records for x in r["result"][key]]
    merged["bases"] = {k: v for r in records for k, v in r["result"]["bases"].items()}
    merged["dependence"] = next((r["result"]["dependence"] for r in records if r["result"]["dependence"]), [])
    merged["pooled"] = next((r["result"]["pooled"] for r in records if r["result"].get("pooled")), [])
    meta = dict(records[0]["meta"])
    meta["command"] = " + ".join(r["meta"]["command"] for r in records) + " (side by side)"
    out = {"meta": meta, "result": merged}
    write_json(RESULTS / "toy_sd3_quality.json", out)
    write_markdown()


if __name__ == "__main__":
    main()
