"""The toy models' cards as text: each family's README.md, rendered from its stored measurements (card.json,
training.json, judge.json, build.json) by `fmn_patch.toy.card.write_readme`. The sections every toy shares (the
accuracy and the toy ConceptBench) are written once.
"""

from __future__ import annotations

import textwrap

from fmn_patch.toy import world
from fmn_patch.toy.judge import PERSON, TOY_HEADS

#: The bar a committed toy model meets: every ConceptBench-toy concept drawn with at least this acc.
BAR = 0.9
LISTED = 24  # concepts under the bar named in the card, the lowest first (card.json has them all)
CATEGORIES = ("object", "style", "identity")
#: What the toy world draws, in a sentence of the cards.
WORLD_TEXT = (
    f"32x32 images of {len(world.OBJECTS)} shapes in {len(world.STYLES)} fills (plain and {len(world.STYLES) - 1} "
    f"styles) and {len(world.IDENTITIES)} identities, busts told apart by hair colour, headwear, a face feature and "
    "the pattern of their top (every combination, each with a made-up one-word name; v1's bob and alice kept), each "
    "in red, green, blue or yellow"
)


def _wrapped(text: str) -> str:
    return textwrap.fill(text, width=115, break_long_words=False, break_on_hyphens=False)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _concepts_text(concepts: dict[str, dict]) -> str:
    """The bench's concepts summarised by category (count, mean M-Score, mean and min acc, how many meet the bar),
    then every concept under the bar by name."""
    rows = []
    for category in CATEGORIES:
        cs = {n: c for n, c in concepts.items() if c["category"] == category}
        if not cs:
            continue
        accs = [c["acc"] for c in cs.values()]
        worst = min(cs, key=lambda n: cs[n]["acc"])
        rows.append(
            f"| {category} | {len(cs)} | {sum(c['m_score'] for c in cs.values()) / len(cs):.3f} | "
            f"{_pct(sum(accs) / len(accs))} | {_pct(cs[worst]['acc'])} ({worst}) | "
            f"{sum(a >= BAR for a in accs)} of {len(cs)} |"
        )
    under = sorted((c["acc"], n) for n, c in concepts.items() if c["acc"] < BAR)
    aliased = ", ".join(f"{n} {_pct(c['alias_acc'])}" for n, c in concepts.items() if "alias_acc" in c)
    listed = ", ".join(f"{n} {_pct(a)}" for a, n in under[:LISTED])
    if len(under) > LISTED:
        listed += f" and {len(under) - LISTED} more"
    verdict = (
        f"**Bar: every concept's acc >= {_pct(BAR)}: met** ({len(concepts)} of {len(concepts)})."
        if not under
        else f"**Bar: every concept's acc >= {_pct(BAR)}: not met**, {len(under)} of {len(concepts)} under it "
        f"(the lowest first): {listed}."
    )
    return f"""| category | concepts | mean M-Score | mean acc | min acc | acc >= {_pct(BAR)} |
|---|---|---|---|---|---|
{chr(10).join(rows)}

{_wrapped(f"{verdict} Alias acc: {aliased or 'no aliases'}. Every concept's scores are in `card.json`.")}"""


def _accuracy_text(card: dict, sampler_name: str = "DDIM", detail: str = ", eta 0") -> str:
    a, s = card["attributes"], card["sampler"]
    n = len(s["seeds"])
    bias = _pct(card["circle_bias"]["red"])
    return f"""## Generation accuracy (toy judge; {sampler_name} {s["steps"]} steps, guidance {s["guidance"]})
Every "a {{colour}} {{style}} {{object}}" prompt ({a["object_prompts"]}) x {n} seeds; every "{{identity}} in
{{colour}}" ({a["identity_prompts"]}) x {n} seeds. identity: all four attributes and "person" right (the judge's
most likely identity); hair, headwear, face, top: that head alone, on the identity prompts.

| object | style | colour | identity | hair | headwear | face | top |
|---|---|---|---|---|---|---|---|
| {_pct(a["object"])} | {_pct(a["style"])} | {_pct(a["colour"])} | {_pct(a["identity"])} | {_pct(a["hair"])} | \
{_pct(a["headwear"])} | {_pct(a["face"])} | {_pct(a["top"])} |

ConceptBench `toy` (`fmn_patch/data/toy/bench.json`). For a concept c with prompts P(c) (its category's
templates x the 4 colours: 8 prompts) and seeds S = {list(s["seeds"])}:
M-Score m(c) = mean over p in P(c), s in S of J_c(x(p, s)), where x(p, s) is the image generated for p from
initial latents drawn by `torch.Generator().manual_seed(s)` ({sampler_name} {s["steps"]} steps{detail}, guidance
{s["guidance"]}) and J_c the toy judge's probability of c: on the subject head for objects, the style head for
styles, and for identities P(person) times each attribute head's probability of c's look. acc(c): the share of
those images whose most likely class is c. Alias acc: the same templates with the alias. Mean alias accuracy:
{_pct(card["alias_acc"])}.

{_concepts_text(card["bench"]["concepts"])}

Bias kept for correction experiments: "a circle" (no colour) is red in {bias} of 32 images.
"""


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
- Data: {cfg["images"]:,} rendered images with captions, half of them people (word-order variety; aliases
  disc/circle, stripy/striped, spotted/dotted, mister bob/bob in 30% of captions; anchor words "shape"/"person" in
  10%; an uncoloured circle is red 90% of the time).
- VAE: {cfg["vae_steps"]} steps, batch {cfg["vae_batch"]}, MSE + {cfg["kl_weight"]:g} KL:
  {training["vae"]["psnr_db"]:.1f} dB PSNR; {t["vae"] / 60:.1f} min (with encoding every image once).
- UNet + text encoder: {unet["steps_done"]} steps, batch {cfg["unet_batch"]}, AdamW lr {cfg["lr"]:g} (warm-up
  {cfg["warmup"]}, cosine to {cfg["min_lr_ratio"]:g}x), {int(100 * cfg["caption_dropout"])}% empty captions,
  EMA {cfg["ema"]}: loss {unet["loss_every_100"][0]:.3f} -> {unet["final_loss"]:.4f} (mean of the last 200
  steps); {t["unet"] / 60:.1f} min{early}.
- Training alone: {_phases_min(t):.1f} min wall time (render, VAE, UNet).
"""


def _phases_min(timings: dict) -> float:
    """Minutes of a training's phases. A run joined by `--resume` records its denoiser's time summed over the
    parts, but its "total" for the last part alone (each part renders the data again), so the phases are the
    honest whole."""
    return sum(v for k, v in timings.items() if k != "total") / 60


def _load_text(build: dict) -> str:
    load = build.get("load_before")
    return f"load average {load:.2f} before the start" if load is not None else "load not recorded"


def _build_text(build: dict | None) -> str:
    if not build:
        return ""
    t = build["timings_s"]
    started = t.get("judge_started_after")
    since = f"from minute {started / 60:.1f}" if started is not None else "its start not recorded"
    return f"""
## Building it all (`make toy-model` = `python -m fmn_patch.toy.build`)
Model training on one core, the judge alongside on the other as soon as the VAE is saved, then this card on
both: model {t["train"] / 60:.1f} min, judge {t["judge"] / 60:.1f} min (alongside, {since}),
card {t["card"] / 60:.1f} min; **total {t["total"] / 60:.1f} min** wall time ({build["machine"]}, {_load_text(build)};
{build["date"]}, git {build["git_revision"]}).
""" + (f"\n{build['note']}\n" if build.get("note") else "")


def unet_card(card: dict, training: dict, judge: dict, build: dict | None = None) -> str:
    """The UNet toy's README: its parts, training, build, accuracy, alias similarity and judge."""
    sims = "\n".join(
        f"| {k} | {v['pooled']:.3f} | {v['token']:.3f} | {v['token_centred']:.3f} |"
        for k, v in card["similarity"].items()
    )
    heads = ", ".join(
        f"{k} ({len(v) - 1} objects + {PERSON})" if k == "subject" else f"{k} ({len(v)})"
        for k, v in TOY_HEADS.items()
    )
    held = ", ".join(f"{k} {_pct(v)}" for k, v in judge["heldout_accuracy"].items())
    held_vae = ", ".join(f"{k} {_pct(v)}" for k, v in judge.get("heldout_vae_accuracy", {}).items())
    intro = _wrapped(
        "A tiny Stable Diffusion pipeline (diffusers `StableDiffusionPipeline`) trained on the toy world of "
        f"`fmn_patch.toy.world` (ConceptBench-toy {world.NAME}): {WORLD_TEXT}. Load it with "
        "`fmn_patch.toy.load_toy_pipeline()` or "
        '`StableDiffusionPipeline.from_pretrained("fmn_patch/data/toy/pipeline")`.'
    )
    judged = _wrapped(
        f"CNN with heads {heads}; an identity is P(person) times its look's probability on the four attribute "
        "heads. Trained on renders and VAE reconstructions with blur/noise/brightness/contrast/flip augmentation. "
        f"Held-out accuracy on renders: {held}; on VAE reconstructions: {held_vae or 'not measured'}."
    )
    return f"""# The toy model (`toy`)

{intro}

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
{judged}

Measuring this card took {card["eval_s"]:.0f} s (`python -m fmn_patch.toy.card`).
"""


def _sd3_parts(card: dict, training: dict) -> str:
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


def sd3_card(card: dict, training: dict, judge: dict, build: dict | None = None) -> str:
    """The toy MMDiT's README: its parts, training, build and accuracy (its judge is the UNet toy's)."""
    cfg, tr = training["config"], training["transformer"]
    t = training["timings_s"]
    built = ""
    if build:
        b = build["timings_s"]
        load_text = _load_text(build)
        built = (
            f"\n## Building it (`make toy-sd3` = `python -m fmn_patch.toy.build --family sd3`)\nTraining "
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
{_sd3_parts(card, training)}

On disk: {card["size_mb"]:.1f} MB (safetensors).

## Training (`python -m fmn_patch.toy.train --family sd3`, seed {cfg["seed"]}, {cfg["threads"]} CPU thread)
- Data: the UNet toy's {cfg["images"]:,} rendered images and captions (same seed), encoded once by its VAE.
- Transformer + the three text encoders: {tr["steps_done"]} steps, batch {cfg["batch"]}, rectified flow with
  logit-normal(0, 1) noise levels (SD3's recipe), AdamW lr {cfg["lr"]:g} (warm-up {cfg["warmup"]}, cosine to
  {cfg["min_lr_ratio"]:g}x), {int(100 * cfg["caption_dropout"])}% empty captions, EMA {cfg["ema"]}: loss
  {tr["loss_every_100"][0]:.3f} -> {tr["final_loss"]:.4f} (mean of the last 200 steps); {t["transformer"] / 60:.1f}
  min; {_phases_min(t):.1f} min in all (render, encoding, transformer).
{built}
{_accuracy_text(card, "flow-matching Euler", "")}
Measuring this card took {card["eval_s"]:.0f} s (`python -m fmn_patch.toy.card --family sd3`).
"""
