"""Measure a trained toy pipeline and write its model card: `python -m fmn_patch.toy.card [--family unet|sd3]`.

Measures, on fresh generations judged by the toy judge, with the pipeline's own sampler: per-attribute accuracy
(object, style, colour on every "a {colour} {style} {object}" prompt; identity, each attribute of its look and
colour on every "{identity} in {colour}"), the M-Score, acc and alias accuracy of every toy ConceptBench concept
(118; the card summarises them by category against the bar, every concept >= 90%), the colour bias of uncoloured
circles, and how close aliases and names end up in the (first) text encoder. Writes `card.json` and `README.md`
(its text: `fmn_patch.toy.card_text`, the family's) into the family's data folder.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline

from fmn_patch.concepts.bench import load_bench
from fmn_patch.evaluation.mscore import SamplerConfig, evaluate, generate
from fmn_patch.toy.family import FAMILIES, UNET, ToyFamily
from fmn_patch.toy.judge import ToyJudge
from fmn_patch.toy.options import log
from fmn_patch.toy.paths import toy_judge_path
from fmn_patch.toy.world import (
    ALIASES,
    ATTRIBUTES,
    COLOURS,
    IDENTITIES,
    LOOKS,
    OBJECTS,
    STYLES,
    caption_words,
)

#: Name pairs whose text-encoder similarity is reported: (name, alias) pairs and unrelated pairs as a baseline.
ALIAS_PAIRS: tuple[tuple[str, str], ...] = tuple((k, a) for k, v in ALIASES.items() for a in v)
BASELINE_PAIRS: tuple[tuple[str, str], ...] = (("circle", "square"), ("striped", "dotted"), ("bob", "alice"))


def attribute_accuracy(pipe: object, judge: ToyJudge, sampler: SamplerConfig) -> dict[str, float]:
    """Per-attribute accuracy on fully specified prompts: object, style and colour on every "a {colour} {style}
    {object}"; identity (all of its look and "person" right), each attribute of its look, and colour on every
    "{identity} in {colour}". Also the number of prompts of each kind (`object_prompts`, `identity_prompts`)."""
    combos = [(o, s, c) for o in OBJECTS for s in STYLES for c in COLOURS]
    images = generate(pipe, [f"a {c} {s} {o}" for o, s, c in combos], sampler, desc="objects")
    pred = judge.predict(images)
    truth = [combo for combo in combos for _ in sampler.seeds]
    out: dict[str, float] = {"object_prompts": len(combos)}
    for key, head, i in (("object", "subject", 0), ("style", "style", 1), ("colour_objects", "colour", 2)):
        out[key] = _share(pred[head], [t[i] for t in truth])
    people = [(i, c) for i in IDENTITIES for c in COLOURS]
    images = generate(pipe, [f"{i} in {c}" for i, c in people], sampler, desc="identities")
    pred = judge.predict(images)
    truth_id = [p for p in people for _ in sampler.seeds]
    out["identity_prompts"] = len(people)
    named = judge.category_probs(images, "identity").argmax(-1)  # (N,)
    out["identity"] = _share([IDENTITIES[int(k)] for k in named], [t[0] for t in truth_id])
    for index, head in enumerate(ATTRIBUTES):
        out[head] = _share(pred[head], [LOOKS[t[0]].values()[index] for t in truth_id])
    out["colour_identities"] = _share(pred["colour"], [t[1] for t in truth_id])
    out["colour"] = (out["colour_objects"] * len(truth) + out["colour_identities"] * len(truth_id)) / (
        len(truth) + len(truth_id)
    )
    return out


def _share(predicted: list[str], truth: list[str]) -> float:
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)


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


def _params(pipe: Any) -> dict[str, int]:
    """Parameters of each of the pipeline's networks (text encoders, VAE, denoiser)."""
    parts = {k: m for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    return {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}


def _tokenizers(pipe: Any) -> dict[str, int]:
    """Vocabulary sizes and lengths: the (first) CLIP tokenizer's, and the T5 one's where there is one."""
    out = {"vocab_size": len(pipe.tokenizer), "max_length": pipe.tokenizer.model_max_length}
    t5 = getattr(pipe, "tokenizer_3", None)
    if t5 is not None:
        out |= {"t5_vocab_size": len(t5), "t5_length": t5.model_max_length}
    return out


def write_readme(out: Path, pipeline: Path, judge_path: Path, family: ToyFamily = UNET) -> Path:
    """Render `out/README.md` from the stored measurements: card.json, training.json, judge.json, build.json."""
    card = json.loads((out / "card.json").read_text())
    training = json.loads((pipeline / "training.json").read_text())
    judge_file = judge_path.with_suffix(".json")
    judge = json.loads(judge_file.read_text()) if judge_file.exists() else {}
    build_file = out / "build.json"
    build = json.loads(build_file.read_text()) if build_file.exists() else None
    (out / "README.md").write_text(family.card(card, training, judge, build))
    return out / "README.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fmn_patch.toy.card", description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=FAMILIES, default=UNET.key, help="which toy (default unet)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt (default 4)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument(
        "--pipeline", type=Path, help="pipeline to measure (default: the family's committed one)"
    )
    parser.add_argument("--judge", type=Path, default=toy_judge_path(), help="judge weights (safetensors)")
    parser.add_argument(
        "--out", type=Path, help="where card.json and README.md go (default: the family's folder)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    family = FAMILIES[args.family]
    pipeline = args.pipeline or family.data_dir / "pipeline"
    out = args.out or family.data_dir
    torch.set_num_threads(args.threads)
    sampler = SamplerConfig(steps=args.steps, guidance=args.guidance, seeds=tuple(range(args.seeds)))
    pipe = DiffusionPipeline.from_pretrained(pipeline)
    pipe.set_progress_bar_config(disable=True)
    card = measure(pipe, sampler, args.judge)
    card["size_mb"] = _size_mb(pipeline)
    card["judge_size_mb"] = args.judge.stat().st_size / 1e6
    card["params"] = _params(pipe)
    card |= _tokenizers(pipe)
    out.mkdir(parents=True, exist_ok=True)
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    log(f"wrote {write_readme(out, pipeline, args.judge, family)}")


if __name__ == "__main__":
    main()
