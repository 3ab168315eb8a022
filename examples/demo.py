"""The fmn-patch demo, on the bundled toy model (the embedded default base):

1. the toy world: rendered images with their captions (ground truth);
2. the base model's generations and the judge's verdict on them;
3. `train_patch`: forget "circle" (a LoRA patch on attn2 to_k/to_v);
4. ConceptBench before/after (every object and style, bob and alice): Acc_erased, alias, Acc_kept, M-Score, and a
   before/after grid;
5. the patch file: inspect it, load it in stock diffusers, export it for kohya UIs, merge it with another.

Everything is written under out/demo/. Without the toy model (`make toy-model`), a shorter demo runs on a tiny random
SD-1.x pipeline with a hand-made patch, so the patch-file part still runs for real.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from fmn_patch import Patch, apply_patches, export_kohya, load_base, merge_patches, remove_patches, summarize
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.evaluation.grid import labelled_grid
from fmn_patch.format.summary import render_text

OUT = Path("out/demo")


def log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def same_in_stock_diffusers(ref: str, path: Path, prompt: str) -> float:
    """Max pixel difference between stock `load_lora_weights` and our apply, same seed."""
    stock = load_base(ref)
    stock.pipe.load_lora_weights(str(path))  # stock diffusers' own loader, on the pipeline itself
    ours = load_base(ref)
    apply_patches(ours, [Patch.load(path)])
    images = [
        p(prompt, num_inference_steps=20, generator=torch.Generator().manual_seed(0), output_type="pt").images
        for p in (stock, ours)
    ]
    return float((images[0] - images[1]).abs().max())


def toy_demo() -> None:

    from PIL import Image

    from fmn_patch.concepts.bench import load_bench
    from fmn_patch.evaluation import evaluate_patches, write_report
    from fmn_patch.evaluation.mscore import SamplerConfig
    from fmn_patch.methods.resteer import TrainConfig, train_patch
    from fmn_patch.toy.judge import PERSON, ToyJudge
    from fmn_patch.toy.world import ATTRIBUTES, IDENTITIES, dataset

    images, labels = dataset(12, seed=7)
    cells = [Image.fromarray(img) for img in images]
    labelled_grid([cells[:6], cells[6:]], scale=4).save(OUT / "world.png")
    log("1. the toy world -> out/demo/world.png; captions: " + " | ".join(s.caption for s in labels[:6]))

    pipe = load_base("toy")
    bench, judge = load_bench("toy"), ToyJudge.load()
    sampler = SamplerConfig(steps=20, guidance=5.0, seeds=(0, 1))
    shown = ["a red circle", "a blue square", "bob in green", "a yellow striped shape"]
    outs = pipe(
        shown,
        num_inference_steps=20,
        generator=[torch.Generator().manual_seed(0) for _ in shown],
        output_type="pt",
    ).images
    verdict = judge.predict(outs)
    people = judge.category_probs(outs, "identity").argmax(-1)  # the most likely identity, from the look
    for i, prompt in enumerate(shown):
        said = {k: verdict[k][i] for k in ("subject", "style", "colour")}
        if said["subject"] == PERSON:  # a person: who, by hair, headwear, face and top
            said = {
                "identity": IDENTITIES[int(people[i])],
                **{k: verdict[k][i] for k in (*ATTRIBUTES, "colour")},
            }
        log(f"2. base draws {prompt!r}: judge says {', '.join(f'{k}={v}' for k, v in said.items())}")

    started = time.perf_counter()
    patch = train_patch(pipe, ["circle"], TrainConfig())
    path = patch.save(OUT / "forget-circle.safetensors", overwrite=True)
    log(f"3. trained a patch forgetting 'circle' in {time.perf_counter() - started:.1f}s -> {path}")

    # every object and style, and two of the 96 people: the whole bench (118 concepts) takes about 5x longer
    scored = [c.name for c in bench.concepts if c.category != "identity"] + ["bob", "alice"]
    report = evaluate_patches(pipe, [patch], bench, judge, sampler, patch_names=[str(path)], concepts=scored)
    paths = write_report(report, OUT / "eval", overwrite=True)
    print(report.to_markdown())
    log(f"4. ConceptBench before/after -> {paths['markdown']}, grid {paths.get('grid')}")

    print(render_text(summarize(Patch.load(path), path)).split("delta norms")[0])
    log(
        f"5. stock diffusers vs fmn-patch apply: max pixel difference "
        f"{same_in_stock_diffusers('toy', path, 'a red circle'):.1e}"
    )
    export_kohya(patch, OUT / "forget-circle.kohya.safetensors", overwrite=True)  # ComfyUI, A1111
    bob = train_patch(pipe, ["bob"], TrainConfig(), progress=False)
    merged, _ = merge_patches([patch, bob], title="forget circle and bob")
    merged.save(OUT / "forget-circle+bob.safetensors", overwrite=True)
    log("   exported for kohya UIs and merged with a 'bob' patch: out/demo/forget-circle+bob.safetensors")


def tiny_demo() -> None:
    """Without the toy model: a hand-made patch (random factors) on a tiny random SD-1.x pipeline."""
    from fmn_patch import PatchInfo, SampleConfig, preview
    from fmn_patch.testing.tiny import build_sd

    log(
        "toy model not built (`make toy-model`): running the patch-file demo on a tiny random SD-1.x pipeline"
    )
    ref = str(build_sd("sd1", OUT / "tiny"))
    pipe = load_base(ref)
    gen = torch.Generator().manual_seed(0)
    factors = {
        m: (
            torch.randn(2, layer.in_features, generator=gen) * 0.05,
            torch.randn(layer.out_features, 2, generator=gen) * 0.3,
        )
        for m, layer in pipe.family.adapters.targets().items()
    }
    base = pipe.describe()
    patch = Patch(factors, PatchInfo(method="manual", base_model=base.model, base_hash=base.hash))
    path = patch.save(OUT / "hand-made.safetensors", overwrite=True)
    print(render_text(summarize(Patch.load(path), path)).split("delta norms")[0])
    preview(pipe, [patch], ["a photo of bob"], seeds=[0, 1], config=SampleConfig(steps=10)).save(
        OUT / "preview.png"
    )
    names = apply_patches(pipe, [patch])
    remove_patches(pipe, names)
    diff = same_in_stock_diffusers(ref, path, "a photo of bob")
    log(f"stock diffusers vs fmn-patch apply: max pixel difference {diff:.1e}")


def main() -> None:
    quiet_libraries()
    OUT.mkdir(parents=True, exist_ok=True)
    from fmn_patch.toy.paths import toy_judge_path, toy_pipeline_path

    if not (toy_pipeline_path() / "model_index.json").exists() or not toy_judge_path().exists():
        tiny_demo()
        return
    toy_demo()


if __name__ == "__main__":
    main()
