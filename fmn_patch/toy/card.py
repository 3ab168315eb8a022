"""Measure the trained toy pipeline and write its model card: `python -m fmn_patch.toy.card`.

Measures, on fresh generations judged by the toy judge: per-attribute accuracy (object, style, colour on every
"a {colour} {style} {object}" prompt; identity and colour on "{identity} in {colour}"), the M-Score, acc and alias
accuracy of every toy ConceptBench concept, the colour bias of uncoloured circles, and how close aliases and
names end up in the text encoder. Writes `card.json` and `README.md` into the toy data folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline

from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.mscore import SamplerConfig, evaluate, generate
from fmn_patch.toy.judge import ToyJudge
from fmn_patch.toy.paths import DATA_DIR, toy_judge_path, toy_pipeline_path
from fmn_patch.toy.world import ALIASES, COLOURS, IDENTITIES, OBJECTS, STYLES, caption_words

#: Name pairs whose text-encoder similarity is reported: (name, alias) pairs and unrelated pairs as a baseline.
ALIAS_PAIRS: tuple[tuple[str, str], ...] = tuple((k, a) for k, v in ALIASES.items() for a in v)
BASELINE_PAIRS: tuple[tuple[str, str], ...] = (("circle", "square"), ("striped", "dotted"), ("bob", "alice"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def attribute_accuracy(pipe: object, judge: ToyJudge, sampler: SamplerConfig) -> dict[str, float]:
    """Per-attribute accuracy on fully specified prompts."""
    combos = [(o, s, c) for o in OBJECTS for s in STYLES for c in COLOURS]
    images = generate(pipe, [f"a {c} {s} {o}" for o, s, c in combos], sampler, desc="objects")
    pred = judge.predict(images)
    n = len(sampler.seeds)
    truth = [combo for combo in combos for _ in range(n)]
    out = {
        "object": sum(p == t[0] for p, t in zip(pred["subject"], truth, strict=True)) / len(truth),
        "style": sum(p == t[1] for p, t in zip(pred["style"], truth, strict=True)) / len(truth),
        "colour_objects": sum(p == t[2] for p, t in zip(pred["colour"], truth, strict=True)) / len(truth),
    }
    people = [(i, c) for i in IDENTITIES for c in COLOURS]
    id_seeds = SamplerConfig(sampler.steps, sampler.guidance, tuple(range(2 * n)), sampler.batch_size)
    images = generate(pipe, [f"{i} in {c}" for i, c in people], id_seeds, desc="identities")
    pred = judge.predict(images)
    truth_id = [p for p in people for _ in range(2 * n)]
    out["identity"] = sum(p == t[0] for p, t in zip(pred["subject"], truth_id, strict=True)) / len(truth_id)
    out["colour_identities"] = sum(p == t[1] for p, t in zip(pred["colour"], truth_id, strict=True)) / len(
        truth_id
    )
    out["colour"] = (out["colour_objects"] * len(truth) + out["colour_identities"] * len(truth_id)) / (
        len(truth) + len(truth_id)
    )
    return out


def circle_bias(pipe: object, judge: ToyJudge, sampler: SamplerConfig, n: int = 32) -> dict[str, float]:
    """Colour distribution of images for the uncoloured prompt "a circle"."""
    seeds = SamplerConfig(sampler.steps, sampler.guidance, tuple(range(n)), sampler.batch_size)
    colours = judge.predict(generate(pipe, ["a circle"], seeds, desc="bias"))["colour"]
    return {c: colours.count(c) / n for c in COLOURS}


@torch.no_grad()
def _encode(pipe: object, words: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled output and the mean hidden state over the word's own tokens, for each word alone."""
    tok, enc = pipe.tokenizer, pipe.text_encoder  # type: ignore[attr-defined]
    ids = tok(words, padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    out = enc(ids.input_ids)
    hidden = out.last_hidden_state  # (B, T, D)
    eos = (ids.input_ids == tok.eos_token_id).int().argmax(-1)  # first EOS
    token = torch.stack([hidden[i, 1 : int(eos[i])].mean(0) for i in range(len(words))])
    pooled = getattr(out, "pooler_output", None)  # CLIPTextModel; with projection (SD3): text_embeds
    return (pooled if pooled is not None else out.text_embeds), token


def alias_similarity(pipe: object) -> dict[str, dict[str, float]]:
    """Cosine similarity of name vs alias (and unrelated baselines), each word encoded alone.

    "pooled": the pooled (EOS) outputs; "token": the final hidden states of the word's own tokens (mean);
    "token_centred": the same after subtracting the mean token state over every world word, which removes the
    share that all words have in common (position, BOS context).
    """
    words = sorted(w for w in caption_words() if w.isalpha())
    _, all_tokens = _encode(pipe, words)
    centre = all_tokens.mean(0)
    result: dict[str, dict[str, float]] = {}
    for a, b in ALIAS_PAIRS + BASELINE_PAIRS:
        pooled, token = _encode(pipe, [a, b])
        result[f"{a} / {b}"] = {
            "pooled": float(F.cosine_similarity(pooled[0], pooled[1], dim=0)),
            "token": float(F.cosine_similarity(token[0], token[1], dim=0)),
            "token_centred": float(F.cosine_similarity(token[0] - centre, token[1] - centre, dim=0)),
        }
    return result


def measure(pipe: object, sampler: SamplerConfig, judge_path: Path | None = None) -> dict:
    t0 = time.perf_counter()
    judge = ToyJudge.load(judge_path)
    out: dict = {"sampler": asdict(sampler)}
    out["attributes"] = attribute_accuracy(pipe, judge, sampler)
    log(json.dumps(out["attributes"]))
    bench = load_bench("toy")
    score = evaluate(pipe, bench, judge, sampler)
    out["bench"] = score.to_dict()
    aliased = [c for c in score.concepts.values() if c.alias_acc is not None]
    out["alias_acc"] = sum(c.alias_acc or 0.0 for c in aliased) / len(aliased)
    out["circle_bias"] = circle_bias(pipe, judge, sampler)
    out["similarity"] = alias_similarity(pipe)
    out["eval_s"] = time.perf_counter() - t0
    return out


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def _params(pipe: object) -> dict[str, int]:
    parts = {"text_encoder": pipe.text_encoder, "vae": pipe.vae, "unet": pipe.unet}  # type: ignore[attr-defined]
    return {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _parts_table(card: dict, training: dict) -> str:
    p = card["params"]
    tok = f"CLIPTokenizer, project vocab ({card['vocab_size']} tokens), max length {card['max_length']}"
    vae = (
        f"AutoencoderKL, channels (32, 64), 16x16x4 latents, scaling {training['vae']['scaling_factor']:.3f}"
    )
    rows = [
        ("tokenizer", f"{tok}; every world word is one token", "-"),
        (
            "text_encoder",
            "CLIPTextModel, hidden 64, 2 layers, 4 heads, trained with the UNet",
            f"{p['text_encoder']:,}",
        ),
        ("vae", vae, f"{p['vae']:,}"),
        ("unet", "UNet2DConditionModel, channels (32, 64), cross-attention at 8x8 only", f"{p['unet']:,}"),
        ("scheduler", "DDIM, SD-1.x scaled-linear betas, 1000 training steps", "-"),
    ]
    return "| part | what | parameters |\n|---|---|---|\n" + "\n".join(
        f"| {a} | {b} | {c} |" for a, b, c in rows
    )


def _training_text(training: dict) -> str:
    t, cfg, unet = training["timings_s"], training["config"], training["unet"]
    early = (
        f" (stopped after {unet['steps_done']} of {cfg['unet_steps']} scheduled steps)"
        if unet["stopped_early"]
        else ""
    )
    return f"""## Training (`python -m fmn_patch.toy.train`, seed {cfg["seed"]}, {cfg["threads"]} CPU threads)
- Data: {cfg["images"]:,} rendered images with captions (word-order variety; aliases disc/circle, stripy/striped,
  spotted/dotted, mister bob/bob in 30% of captions; anchor words "shape"/"person" in 10%; an uncoloured circle
  is red 90% of the time).
- VAE: {cfg["vae_steps"]} steps, batch {cfg["vae_batch"]}, MSE + {cfg["kl_weight"]:g} KL:
  {training["vae"]["psnr_db"]:.1f} dB PSNR; {t["vae"] / 60:.1f} min (with encoding every image once).
- UNet + text encoder: {unet["steps_done"]} steps, batch {cfg["unet_batch"]}, AdamW lr {cfg["lr"]:g} (warm-up
  {cfg["warmup"]}, cosine to {cfg["min_lr_ratio"]:g}x), {int(100 * cfg["caption_dropout"])}% empty captions,
  EMA {cfg["ema"]}: loss {unet["loss_every_100"][0]:.3f} -> {unet["final_loss"]:.4f} (mean of the last 200
  steps); {t["unet"] / 60:.1f} min{early}.
- Training alone: {t["total"] / 60:.1f} min wall time.
"""


def _build_text(build: dict | None) -> str:
    if not build:
        return ""
    t = build["timings_s"]
    return f"""
## Building it all (`make toy-model` = `python -m fmn_patch.toy.build`)
Model training on one core, the judge alongside on the other as soon as the VAE is saved, then this card on
both: model {t["train"] / 60:.1f} min, judge {t["judge"] / 60:.1f} min (alongside, from minute
{t["judge_started_after"] / 60:.1f}), card {t["card"] / 60:.1f} min;
**total {t["total"] / 60:.1f} min** wall time ({build["machine"]}, load average {build["load_before"]:.2f} before the
start; {build["date"]}, git {build["git_revision"]}).
"""


def _accuracy_text(card: dict, sampler_name: str = "DDIM", detail: str = ", eta 0") -> str:
    a, s = card["attributes"], card["sampler"]
    n = len(s["seeds"])
    rows = "\n".join(
        f"| {name} | {c['category']} | {c['m_score']:.3f} | {_pct(c['acc'])} | "
        f"{_pct(c['alias_acc']) if 'alias_acc' in c else '-'} |"
        for name, c in card["bench"]["concepts"].items()
    )
    bias = _pct(card["circle_bias"]["red"])
    return f"""## Generation accuracy (toy judge; {sampler_name} {s["steps"]} steps, guidance {s["guidance"]})
Every "a {{colour}} {{style}} {{object}}" prompt (80) x {n} seeds; every "{{identity}} in {{colour}}" (8) x {2 * n}
seeds.

| object | style | identity | colour |
|---|---|---|---|
| {_pct(a["object"])} | {_pct(a["style"])} | {_pct(a["identity"])} | {_pct(a["colour"])} |

ConceptBench `toy` (`fmn_patch/data/conceptbench/toy.json`). For a concept c with prompts P(c) (its category's
templates x the 4 colours: 8 prompts) and seeds S = {list(s["seeds"])}:
M-Score m(c) = mean over p in P(c), s in S of J_c(x(p, s)), where x(p, s) is the image generated for p from
initial latents drawn by `torch.Generator().manual_seed(s)` ({sampler_name} {s["steps"]} steps{detail}, guidance
{s["guidance"]}) and J_c the toy judge's softmax probability of c on the head of c's category (subject for
objects and identities, style for styles). acc(c): the share of those images whose top class on that head is c.
Alias columns: the same templates with the alias. Mean alias accuracy: {_pct(card["alias_acc"])}.

| concept | category | M-Score | acc | alias acc |
|---|---|---|---|---|
{rows}

Bias kept for correction experiments: "a circle" (no colour) is red in {bias} of 32 images.
"""


def render_card(card: dict, training: dict, judge: dict, build: dict | None = None) -> str:
    sims = "\n".join(
        f"| {k} | {v['pooled']:.3f} | {v['token']:.3f} | {v['token_centred']:.3f} |"
        for k, v in card["similarity"].items()
    )
    held = ", ".join(f"{k} {_pct(v)}" for k, v in judge["heldout_accuracy"].items())
    held_vae = ", ".join(f"{k} {_pct(v)}" for k, v in judge.get("heldout_vae_accuracy", {}).items())
    return f"""# The toy model (`toy`)

A tiny Stable Diffusion pipeline (diffusers `StableDiffusionPipeline`) trained on the toy world of
`fmn_patch.toy.world`: 32x32 images of shapes (circle, square, triangle, cross, star) in fills (plain,
striped, dotted, checkered) and two identities (bob, a smiley with a top hat; alice, a figure in a dress),
each in red, green, blue or yellow. Load it with `fmn_patch.toy.load_toy_pipeline()` or
`StableDiffusionPipeline.from_pretrained("fmn_patch/data/toy/pipeline")`.

## Parts and sizes
{_parts_table(card, training)}

On disk: {card["size_mb"]:.1f} MB (safetensors). Judge: {judge["params"]:,} parameters, {card["judge_size_mb"]:.1f} MB.

{_training_text(training)}{_build_text(build)}
{_accuracy_text(card)}
## Alias vs name in the text encoder (cosine similarity, each word alone)
"pooled": the pooled (EOS) output; "token": the mean final hidden state over the word's tokens; "centred": the
token states minus their mean over all world words (removes what every word shares). The last three rows are
unrelated words, for scale.

| pair | pooled | token | centred |
|---|---|---|---|
{sims}

## Judge (`python -m fmn_patch.toy.train_judge`)
CNN with heads subject (5 objects + 2 identities), style (4), colour (4); trained on renders and VAE
reconstructions with blur/noise/brightness/contrast/flip augmentation. Held-out accuracy on renders: {held};
on VAE reconstructions: {held_vae or "not measured"}.

Measuring this card took {card["eval_s"]:.0f} s (`python -m fmn_patch.toy.card`).
"""


def write_readme(out: Path, pipeline: Path, judge_path: Path) -> Path:
    """Render `out/README.md` from the stored measurements: card.json, training.json, judge.json, build.json."""
    card = json.loads((out / "card.json").read_text())
    training = json.loads((pipeline / "training.json").read_text())
    judge = json.loads(judge_path.with_suffix(".json").read_text())
    build_file = out / "build.json"
    build = json.loads(build_file.read_text()) if build_file.exists() else None
    (out / "README.md").write_text(render_card(card, training, judge, build))
    return out / "README.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fmn_patch.toy.card", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt (default 4)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--pipeline", type=Path, default=toy_pipeline_path(), help="pipeline to measure")
    parser.add_argument("--judge", type=Path, default=toy_judge_path(), help="judge weights (safetensors)")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="where card.json and README.md go")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sampler = SamplerConfig(steps=args.steps, guidance=args.guidance, seeds=tuple(range(args.seeds)))
    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    card = measure(pipe, sampler, args.judge)
    card["size_mb"] = _size_mb(args.pipeline)
    card["judge_size_mb"] = args.judge.stat().st_size / 1e6
    card["params"] = _params(pipe)
    card["vocab_size"], card["max_length"] = len(pipe.tokenizer), pipe.tokenizer.model_max_length
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    log(f"wrote {write_readme(args.out, args.pipeline, args.judge)}")


if __name__ == "__main__":
    main()
