"""The toy models' cards as text: each family's README.md, rendered from its stored measurements (card.json,
training.json, judge.json, build.json) by `fmn_patch.toy.card.write_readme`. The sections every toy shares (the
accuracy and the toy ConceptBench) are written once.
"""

from __future__ import annotations


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


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


def unet_card(card: dict, training: dict, judge: dict, build: dict | None = None) -> str:
    """The UNet toy's README: its parts, training, build, accuracy, alias similarity and judge."""
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
        load = build.get("load_before")
        load_text = f"load average {load:.2f} before the start" if load is not None else "load not recorded"
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
  min; {t["total"] / 60:.1f} min in all.
{built}
{_accuracy_text(card, "flow-matching Euler", "")}
Measuring this card took {card["eval_s"]:.0f} s (`python -m fmn_patch.toy.card --family sd3`).
"""
