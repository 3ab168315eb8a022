"""Measure the toy MMDiT (``toy-sd3``) and write its model card: `python -m fmn_patch.toy.card_sd3`.

The same measurements as the UNet toy's card (``fmn_patch.toy.card.measure``: per-attribute accuracy, the toy
ConceptBench, the colour bias of uncoloured circles, alias similarity in the first CLIP encoder), judged by the
same toy judge, sampled by the pipeline's own flow-matching Euler sampler at the toy's T5 length. Writes
``card.json`` and ``README.md`` into ``fmn_patch/data/toy_sd3``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import StableDiffusion3Pipeline

from fmn_patch.evaluation.mscore import SamplerConfig
from fmn_patch.toy.card import _accuracy_text, _size_mb, measure
from fmn_patch.toy.paths import SD3_DATA_DIR, toy_judge_path, toy_sd3_pipeline_path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _params(pipe: StableDiffusion3Pipeline) -> dict[str, int]:
    parts = ("text_encoder", "text_encoder_2", "text_encoder_3", "vae", "transformer")
    return {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in parts}


def _parts(card: dict, training: dict) -> str:
    p, m, vae = card["params"], training["model"], training["vae"]
    rows = [
        ("tokenizer, tokenizer_2", f"the toy CLIP vocabulary ({card['vocab_size']} tokens, max length "
         f"{card['max_length']})", "-"),
        ("tokenizer_3", f"T5-style Unigram over the same words ({card['t5_vocab_size']} pieces; pad 0, `</s>` 1, "
         "unk 2)", "-"),
        ("text_encoder, text_encoder_2", f"CLIPTextModelWithProjection, hidden {m['clip_hidden']}, "
         f"{m['clip_layers']} layers, projection {m['clip_projection']}; penultimate states concatenated, "
         f"zero-padded to {m['t5_width']}", f"{p['text_encoder']:,} + {p['text_encoder_2']:,}"),
        ("text_encoder_3", f"T5EncoderModel, width {m['t5_width']}, {m['t5_layers']} layers",
         f"{p['text_encoder_3']:,}"),
        ("transformer", f"SD3Transformer2DModel, width {m['width']} ({m['heads']} heads), {m['layers']} joint "
         f"blocks (the last `context_pre_only`), patch {m['patch']}, QK RMS norm", f"{p['transformer']:,}"),
        ("vae", f"the UNet toy's AutoencoderKL (same weights), shift {vae['shift_factor']:.4f}, scale "
         f"{vae['scaling_factor']:.4f}", f"{p['vae']:,}"),
        ("scheduler", f"FlowMatchEulerDiscreteScheduler, shift {m['shift']}", "-"),
    ]  # fmt: skip
    return "| part | what | parameters |\n|---|---|---|\n" + "\n".join(
        f"| {a} | {b} | {c} |" for a, b, c in rows
    )


def render_card(card: dict, training: dict, build: dict | None = None) -> str:
    cfg, tr = training["config"], training["transformer"]
    t = training["timings_s"]
    built = ""
    if build:
        b = build["timings_s"]
        load = build.get("load_before")
        load_text = f"load average {load:.2f} before the start" if load is not None else "load not recorded"
        built = (
            f"\n## Building it (`make toy-sd3` = `python -m fmn_patch.toy.build_sd3`)\nTraining "
            f"{b['train'] / 60:.1f} min on one core, this card {b['card'] / 60:.1f} min; **total "
            f"{b['total'] / 60:.1f} min** wall time ({build['machine']}, {load_text}; {build['date']}, "
            f"git {build['git_revision']}).\n" + (f"\n{build['note']}\n" if build.get("note") else "")
        )
    return f"""# The toy MMDiT (`toy-sd3`)

A tiny Stable Diffusion 3.5-style pipeline (diffusers `StableDiffusion3Pipeline`) trained on the same toy world as
the UNet toy (`fmn_patch/data/toy`), with the same VAE and judged by the same judge, so that forgetting can be
measured on both families side by side. Load it with `fmn_patch.load_base("toy-sd3")` or
`StableDiffusion3Pipeline.from_pretrained("fmn_patch/data/toy_sd3/pipeline")`, and sample with
`max_sequence_length={card["t5_length"]}` (its T5 part was trained at that length; the pipeline's default, 256,
adds padding tokens it never saw).

## Parts and sizes
{_parts(card, training)}

On disk: {card["size_mb"]:.1f} MB (safetensors).

## Training (`python -m fmn_patch.toy.train_sd3`, seed {cfg["seed"]}, {cfg["threads"]} CPU thread)
- Data: the UNet toy's {cfg["images"]:,} rendered images and captions (same seed), encoded once by its VAE.
- Transformer + the three text encoders: {tr["steps_done"]} steps, batch {cfg["batch"]}, rectified flow with
  logit-normal(0, 1) noise levels (SD3's recipe), AdamW lr {cfg["lr"]:g} (warm-up {cfg["warmup"]}, cosine to
  {cfg["min_lr_ratio"]:g}x), {int(100 * cfg["caption_dropout"])}% empty captions, EMA {cfg["ema"]}: loss
  {tr["loss_every_100"][0]:.3f} -> {tr["final_loss"]:.4f} (mean of the last 200 steps); {t["transformer"] / 60:.1f}
  min; {t["total"] / 60:.1f} min in all.
{built}
{_accuracy_text(card, "flow-matching Euler", "")}
Measuring this card took {card["eval_s"]:.0f} s (`python -m fmn_patch.toy.card_sd3`).
"""


def write_readme(out: Path, pipeline: Path) -> Path:
    card = json.loads((out / "card.json").read_text())
    training = json.loads((pipeline / "training.json").read_text())
    build_file = out / "build.json"
    build = json.loads(build_file.read_text()) if build_file.exists() else None
    (out / "README.md").write_text(render_card(card, training, build))
    return out / "README.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fmn_patch.toy.card_sd3", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt (default 4)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--pipeline", type=Path, default=toy_sd3_pipeline_path(), help="pipeline to measure")
    parser.add_argument("--judge", type=Path, default=toy_judge_path(), help="judge weights (safetensors)")
    parser.add_argument("--out", type=Path, default=SD3_DATA_DIR, help="where card.json and README.md go")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sampler = SamplerConfig(steps=args.steps, guidance=args.guidance, seeds=tuple(range(args.seeds)))
    pipe = StableDiffusion3Pipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    card = measure(pipe, sampler, args.judge)
    card["size_mb"] = _size_mb(args.pipeline)
    card["params"] = _params(pipe)
    card["vocab_size"], card["max_length"] = len(pipe.tokenizer), pipe.tokenizer.model_max_length
    card["t5_vocab_size"], card["t5_length"] = len(pipe.tokenizer_3), pipe.tokenizer_3.model_max_length
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    log(f"wrote {write_readme(args.out, args.pipeline)}")


if __name__ == "__main__":
    main()
