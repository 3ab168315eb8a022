"""The fmn-patch demo: make a patch by hand, look inside it, apply it, stack/merge/export it, and check that
stock diffusers loads it to the same images. Runs on the bundled toy model when it is built (`make toy-model`),
otherwise on a tiny random SD-1.x pipeline. Writes everything under out/demo/.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from fmn_patch import (
    Patch,
    PatchConcept,
    PatchInfo,
    SampleConfig,
    apply_patches,
    describe_base,
    export_kohya,
    find_targets,
    load_base,
    merge_patches,
    preview,
    remove_patches,
    summarize,
)
from fmn_patch.base import toy_path
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.errors import FmnPatchError
from fmn_patch.summary import render_text

OUT = Path("out/demo")


def log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def base_ref() -> str:
    try:
        toy_path()
        return "toy"
    except FmnPatchError:
        from fmn_patch.tiny import build_sd

        log("toy model not built yet (`make toy-model`): using a tiny random SD-1.x pipeline instead")
        return str(build_sd("sd1", OUT / "tiny"))


@torch.no_grad()
def project_out(pipe, word: str, concept: PatchConcept) -> Patch:
    """A hand-made forgetting patch: remove the directions the word's encoder states span from every attn2 K/V.

    delta = -W U U^T, with U an orthonormal basis of the text encoder's states at the word's token and every
    position after it (causal attention carries a concept into the later positions). Crude but real.
    """
    ids = pipe.tokenizer(
        f"a {word}", padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    states = pipe.text_encoder(ids)[0][0]  # (T, d)
    u, _, _ = torch.linalg.svd(states[2:].T, full_matrices=False)  # states after BOS and "a"
    basis = u[:, :2]  # (d, 2)
    deltas = {name: -layer.weight @ basis @ basis.T for name, layer in find_targets(pipe.unet).items()}
    base = describe_base(pipe)
    info = PatchInfo(
        method="manual",
        concepts=(concept,),
        base_model=base.model,
        base_hash=base.hash,
        architecture=base.architecture,
        config={"recipe": "project-out", "word": word, "rank": 2},
    )
    patch, _ = Patch.from_deltas(deltas, rank=2, info=info)
    return patch


def main() -> None:
    quiet_libraries()
    OUT.mkdir(parents=True, exist_ok=True)
    ref = base_ref()
    t = time.perf_counter()
    pipe = load_base(ref)
    log(f"loaded base {ref} in {time.perf_counter() - t:.1f}s")

    circle = project_out(pipe, "circle", PatchConcept("circle", "object"))
    square = project_out(pipe, "square", PatchConcept("square", "object"))
    path = circle.save(OUT / "forget-circle.safetensors", overwrite=True)
    square.save(OUT / "forget-square.safetensors", overwrite=True)
    print(render_text(summarize(Patch.load(path), path)).split("delta norms")[0])

    prompts = ["a red circle", "a blue square", "a green triangle"]
    config = SampleConfig(steps=20, guidance=5.0)
    grid = preview(pipe, [Patch.load(path)], prompts, seeds=[0, 1], config=config)
    grid.save(OUT / "preview-circle.png")
    log(f"before/after grid: {OUT / 'preview-circle.png'}")

    merged, report = merge_patches([circle, square], title="forget circle and square")
    merged.save(OUT / "forget-circle+square.safetensors", overwrite=True)
    names = apply_patches(pipe, [circle, square])
    stacked = pipe(
        prompts[0], num_inference_steps=20, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    remove_patches(pipe, names)
    apply_patches(pipe, [merged])
    merged_img = pipe(
        prompts[0], num_inference_steps=20, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    remove_patches(pipe)
    log(
        f"merge (rank {merged.rank}, residual {report.total:.1e}) vs stack: max pixel difference "
        f"{float((stacked - merged_img).abs().max()):.2e}"
    )

    export_kohya(circle, OUT / "forget-circle-kohya.safetensors", overwrite=True)
    stock = load_base(ref)
    stock.load_lora_weights(str(path))  # stock diffusers, no fmn_patch involved in the load
    theirs = stock(
        prompts[0], num_inference_steps=20, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    apply_patches(pipe, [Patch.load(path)])
    ours = pipe(
        prompts[0], num_inference_steps=20, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    log(
        f"stock diffusers load_lora_weights vs fmn-patch apply: max pixel difference "
        f"{float((theirs - ours).abs().max()):.2e}"
    )
    for f in sorted(OUT.glob("*.*")):
        print(f)


if __name__ == "__main__":
    main()
