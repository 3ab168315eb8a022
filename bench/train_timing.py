"""What forgetting one concept costs at full size (SD-1.5 architecture, 512 px): the default ``fmnpatch train``, the
default ``--robust`` and FMN's recipe, side by side in one run; and the bare command (``bare``: no ``--images``), whose
first and largest CPU phase is drawing its own reference images, reported apart from training; and ``te-rounds``:
the plain patch, then the text-encoder rounds of issue 30's designs (``bench/encoder_robust.py``).

    python bench/train_timing.py                                  # CPU, fp32, 2 measured steps of each phase
    python bench/train_timing.py --steps 3 --threads 2 --note "idle machine"
    python bench/train_timing.py --device cuda --dtype float16 --full   # a GPU: every default run end to end

Builds, without any download of weights, a real ``StableDiffusionPipeline`` at random init: the SD-1.5 UNet from
``bench/configs/sd15.json`` (860M parameters), an SD-1.5-size CLIP text encoder, an SD-1.5-shaped VAE, and the real
CLIP tokenizer (from the open_clip wheel; see ``bench/edit_timing.py``), so "Elon Musk" has its real tokens and
positions. The compute is real even though the weights are not. Two reference images (noise, 512 px) stand in for
the concept's pictures; every method but ``bare`` reads the same folder. ``bare`` draws its references as
``fmnpatch train "Elon Musk"`` does (every prompt x ``images_per_prompt`` images, ``image_steps`` sampler steps each,
no cache), timed from the library's progress channel and extrapolated per image-step to the default counts.

Each method runs in its own process (so that its peak memory, max RSS, is its own) through the library's public
entry points, ``train_patch`` and ``train_fmn_baseline``. A default run is long on a CPU, so each runs its default
config with fewer steps (``--steps`` per phase: training steps, one chunk of the target pool, inner-attack steps),
and the patch header's per-phase record (seconds and denoiser samples) is extrapolated to the default counts:

    total = prepare + edit + sum over phases (pool, steps, attacks) of default samples x seconds per sample

FMN's recipe likewise: its setup plus 35 steps x the median step. ``te-rounds`` adds to the plain run one inner
Concept Inversion and the fits of its first and last round (``--steps`` steps each, median step from the progress
channel), extrapolated to ``TE``'s rounds and steps: an attack costs the same every round; a fit's step grows with
its erase prompts (one word more each round), so the rounds between are interpolated linearly. The robust design
with the text-encoder rounds on top (``robust-te``) is the robust run plus the same text-encoder phases. Peak
memory is the measured run's (the first step reaches it). ``--full`` runs every default config to the end instead
(a GPU; the text-encoder rounds are still measured and extrapolated). Writes
``bench/results/train_timing.json`` with ``total_ratio`` (ours / FMN's total) and ``memory_ratio`` (ours / FMN's
peak) for plain and robust, and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

CONCEPT = ("Elon Musk", "identity")
PIXELS = 512
METHODS = ("plain", "robust", "fmn", "bare", "te-rounds")
DRAWING = "drawing reference images"  # the phase's name on fmn_patch's progress channel
ATTACKING = "learning concept tokens (textual inversion)"  # an inner Concept Inversion's phase (learn_tokens)
FITTING = "fitting the text encoder"  # a text-encoder fit's phase (fit_encoder)
#: the text-encoder part of issue 30's designs 1 and 2 as run on the toy (bench/encoder_robust.py, BENCHMARKS.md
#: "Robust designs with a text-encoder part"): attack-and-fit rounds, steps per fit, the encoder's last layers, rank
TE = {"rounds": 12, "steps": 300, "layers": 2, "rank": 16}


def sd15_pipeline(seed: int = 0) -> Any:
    """A real StableDiffusionPipeline with SD-1.5's architecture at random init (no weights downloaded)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from edit_timing import clip_tokenizer, sd15_pipe

    cache = os.environ.get("FMN_OPEN_CLIP_CACHE")  # a machine without network: a folder holding tokenizer/
    tokenizer = clip_tokenizer(Path(cache)) if cache else clip_tokenizer()
    text_encoder = sd15_pipe(tokenizer, seed).text_encoder  # the SD-1.5-size CLIP text tower, random init
    torch.manual_seed(seed)
    config = {
        k: v for k, v in json.loads((HERE / "configs" / "sd15.json").read_text()).items() if k[0] != "_"
    }
    unet = UNet2DConditionModel(**config)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=PIXELS,
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def reference_folder(folder: Path, count: int = 2) -> Path:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = (torch.rand(PIXELS, PIXELS, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"ref{i}.png")
    return folder


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def defaults(method: str) -> Any:
    """The default config of ``fmnpatch train`` (``--robust`` for robust) on a real-world base."""
    from fmn_patch.methods.budget import resolved
    from fmn_patch.methods.resteer import ROBUST_ROUNDS, TrainConfig

    rounds = ROBUST_ROUNDS if method == "robust" else 0  # bare: the plain default, without --images
    # the UNet's budget (SD-1.5 is measured): plain, or --robust's own (from zero, its rounds)
    return resolved(TrainConfig(bench="real", robust_rounds=rounds), closed_form=True)


def measured(config: Any, steps: int) -> Any:
    """``config`` with ``steps`` steps per phase: training steps (per round), one pool chunk, inner-attack steps."""
    rounds = max(1, config.robust_rounds)
    return dataclasses.replace(
        config,
        steps=steps * rounds,
        pool=min(config.pool, config.batch_size),
        robust_attack_steps=min(config.robust_attack_steps, steps),
    )


def references(events: list[Any], run: Any, default: Any) -> dict[str, Any]:
    """The reference drawing of a bare run from its progress events: the units are image-steps (one sampler step of
    one image), measured at ``run.image_steps`` per image and extrapolated to ``default.image_steps``."""
    drawn = [e for e in events if e.phase == DRAWING and e.ended]
    if not drawn:
        raise SystemExit(f"no {DRAWING!r} phase was reported: were the references cached or given?")
    end = drawn[-1]
    images = end.done // run.image_steps
    return {
        "measured_samples": end.done,
        "measured_seconds": round(end.seconds, 3),
        "seconds_per_sample": round(end.seconds / end.done, 4),
        "default_samples": images * default.image_steps,
        "seconds": round(images * default.image_steps * end.seconds / end.done, 2),
    }


def extrapolate(cost: dict[str, Any], config: Any, default: Any) -> dict[str, Any]:
    """Per phase: default samples x measured seconds per sample; prepare and edit as measured."""
    seconds, samples = cost["seconds"], cost["samples"]
    rounds = max(1, default.robust_rounds)
    counts = {
        # each round computes its own pool, never more targets than the round's steps draw (resteer.run_steps)
        "pool": min(default.pool, math.ceil(default.steps / rounds) * default.batch_size) * rounds,
        "steps": math.ceil(default.steps / rounds) * rounds * default.batch_size,
        # inner-attack samples as robust.py counts them: latents per inversion step; one prompt per kv step
        "attacks": (rounds - 1)
        * default.robust_attack_steps
        * (default.robust_attack_batch if default.robust_attack == "inversion" else 1),
    }
    phases: dict[str, Any] = {}
    for phase in ("prepare", "edit"):
        if phase in seconds:
            phases[phase] = {"seconds": seconds[phase]}
    for phase, count in counts.items():
        if count and samples.get(phase):
            per = seconds[phase] / samples[phase]
            if phase == "steps":  # the median step: the first step also pays one-off costs
                per = cost["median_step_s"] / config.batch_size
            phases[phase] = {
                "measured_samples": samples[phase],
                "measured_seconds": round(seconds[phase], 3),
                "seconds_per_sample": round(per, 4),
                "default_samples": count,
                "seconds": round(count * per, 2),
            }
    return {"phases": phases, "total_s": round(sum(p["seconds"] for p in phases.values()), 1)}


def step_seconds(events: list[Any], phase: str) -> list[list[float]]:
    """Each run of ``phase`` on the progress channel: its steps' seconds (the differences of the reports)."""
    runs: list[list[float]] = []
    last = 0.0
    for e in events:
        if e.phase != phase:
            continue
        if e.done == 0 and not e.ended:  # a run begins
            runs.append([])
            last = 0.0
        elif not e.ended:
            runs[-1].append(e.seconds - last)
            last = e.seconds
    return runs


def encoder_rounds(pipe: Any, patch: Any, images: str, steps: int, default: Any) -> dict[str, Any]:
    """The text-encoder rounds on top of ``patch``, measured over ``steps`` steps and extrapolated to ``TE``: the
    phases ``te setup`` (each attack's and fit's own fixed cost), ``te attacks`` (latents x seconds; on the latents
    at ``default.train_size``, as the robust run's inner attacks) and ``te fits`` (fit steps x seconds; the mean of
    the first round's and the last's median step)."""
    from encoder_robust import harvest, round_prompts

    from fmn_patch import apply_patches, as_base, listening, remove_patches
    from fmn_patch.concepts.bench import load_bench
    from fmn_patch.concepts.prompts import plan, preserve_prompts, resolve
    from fmn_patch.methods.dataset import reference_latents
    from fmn_patch.methods.encoder import EncoderFitConfig, fit_encoder
    from fmn_patch.methods.inversion import LearnedTokens

    base = as_base(pipe)
    bench = load_bench("real")
    c = resolve([CONCEPT[0]], bench, CONCEPT[1])[0]
    pl = plan(c, bench)
    preserve = tuple(p for p in preserve_prompts(bench, [c]) if p)
    # the latents the robust run's inner attack reads: the folder's images at the training size
    latents, _ = reference_latents(
        base, pl.prompts, default.images_per_prompt, steps=default.image_steps,
        guidance=default.image_guidance, images=images, size=default.train_size,
    )  # fmt: skip
    fit = EncoderFitConfig(layers=TE["layers"], rank=TE["rank"], steps=steps)
    events: list[Any] = []
    walls = {}
    with listening(events.append):
        applied = apply_patches(base, [patch])  # the attack sees the patch (and no text-encoder factor yet)
        try:
            tick = time.perf_counter()
            token = harvest(
                base, pl, latents, 1, dataclasses.replace(default, robust_attack_steps=steps), progress=True
            )
            walls["attack"] = time.perf_counter() - tick
        finally:
            remove_patches(base, applied)
        # the last round's fit reads every token harvested: the same vectors under each round's name
        tokens = [LearnedTokens(f"<fmn-adv-{r}>", token.embeddings, []) for r in range(1, TE["rounds"] + 1)]
        for key, found in (("first", []), ("last", tokens)):
            tick = time.perf_counter()
            fit_encoder(base, round_prompts(c, pl, preserve, found), fit, found, progress=True)
            walls[key] = time.perf_counter() - tick
    (attack,) = step_seconds(events, ATTACKING)
    first, last = step_seconds(events, FITTING)
    fixed = (walls["first"] - sum(first) + walls["last"] - sum(last)) / 2 * (TE["rounds"] + 1)
    fixed += (walls["attack"] - sum(attack)) * TE["rounds"]
    fit_step = (statistics.median(first) + statistics.median(last)) / 2
    batch = default.robust_attack_batch
    return {
        "te setup": {"seconds": round(fixed, 2)},
        "te attacks": {
            "measured_samples": len(attack) * batch,
            "measured_seconds": round(sum(attack), 3),
            "seconds_per_sample": round(statistics.median(attack) / batch, 4),
            "default_samples": TE["rounds"] * default.robust_attack_steps * batch,
            "seconds": round(TE["rounds"] * default.robust_attack_steps * statistics.median(attack), 2),
        },
        "te fits": {  # a sample here is one fit step (every erase prompt and a batch of preserve prompts)
            "measured_samples": len(first) + len(last),
            "measured_seconds": round(sum(first) + sum(last), 3),
            "seconds_per_sample": round(fit_step, 4),
            "first_step_s": round(statistics.median(first), 4),
            "last_step_s": round(statistics.median(last), 4),
            "default_samples": (TE["rounds"] + 1) * TE["steps"],
            "seconds": round((TE["rounds"] + 1) * TE["steps"] * fit_step, 2),
        },
    }


def run_method(method: str, steps: int, full: bool, device: str, dtype: str) -> dict[str, Any]:
    """One method in this process: build, train, report."""
    from fmn_patch import Event, listening
    from fmn_patch.cli.options import quiet_libraries
    from fmn_patch.concepts.bench import load_bench
    from fmn_patch.methods.baseline import FMNConfig, train_fmn_baseline
    from fmn_patch.methods.resteer import train_patch

    quiet_libraries()
    t0 = time.perf_counter()
    dtype = (
        "float32" if method == "fmn" else dtype
    )  # FMN's recipe is float32 (AdamW on the weights themselves)
    pipe = sd15_pipeline().to(device, getattr(torch, dtype))
    build = time.perf_counter() - t0
    rss_built = peak_rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    row: dict[str, Any] = {"method": method, "dtype": dtype}
    with tempfile.TemporaryDirectory() as tmp:
        images = str(reference_folder(Path(tmp)))
        t0 = time.perf_counter()
        if method == "fmn":
            fmn = FMNConfig()
            run = fmn if full else dataclasses.replace(fmn, steps=steps)
            report = train_fmn_baseline(pipe, [CONCEPT], run, images=images, progress=False)
            median = statistics.median(report.step_seconds)
            setup = report.seconds - sum(report.step_seconds)
            row |= {
                "config": {
                    "steps": fmn.steps,
                    "batch_size": fmn.batch_size,
                    "lr": fmn.lr,
                    "trainable": fmn.trainable,
                },
                "trainable_parameters": report.trainable_parameters,
                "median_step_s": round(median, 3),
                "phases": {
                    "prepare": {"seconds": round(setup, 2)},
                    "steps": {
                        "measured_samples": len(report.step_seconds) * fmn.batch_size,
                        "seconds_per_sample": round(median / fmn.batch_size, 4),
                        "default_samples": fmn.steps * fmn.batch_size,
                        "seconds": round(median * fmn.steps, 2),
                    },
                },
                "total_s": round(setup + median * fmn.steps, 1),
            }
        else:
            default = defaults(method)
            run = default if full else measured(default, steps)
            bare = method == "bare"
            if bare and not full:  # every reference image, each over fewer sampler steps
                run = dataclasses.replace(run, image_steps=min(default.image_steps, steps))
            events: list[Event] = []
            os.environ["FMNPATCH_CACHE"] = tmp  # an empty cache: the bare run draws its references
            with listening(events.append):
                patch = train_patch(
                    pipe, [CONCEPT[0]], run, categories=[CONCEPT[1]], images=None if bare else images,
                    bench=load_bench("real"), progress=False,
                )  # fmt: skip
            cost = patch.info.extra["cost"] | {"median_step_s": patch.info.extra["seconds_per_step"]}
            te = encoder_rounds(pipe, patch, images, steps, default) if method == "te-rounds" else {}
            keys: tuple[str, ...] = ("steps", "batch_size", "pool", "train_size", "checkpointing", "init")
            keys += ("robust_rounds",)
            keys += ("robust_attack", "robust_attack_steps", "robust_attack_batch")
            row |= {
                "config": {k: getattr(default, k) for k in keys},
                "trainable_parameters": sum(a.numel() + b.numel() for a, b in patch.factors.values()),
                "median_step_s": cost["median_step_s"],
                **extrapolate(cost, run, default),
            }
            if te:  # after the plain run's phases
                row["config"] |= {f"te_{k}": v for k, v in TE.items()}
                row["phases"] |= te
                row["total_s"] = round(sum(p["seconds"] for p in row["phases"].values()), 1)
            if bare:  # apart from training: out of "prepare", which timed it too
                drawing = references(events, run, default)
                row["phases"]["prepare"]["seconds"] = round(
                    row["phases"]["prepare"]["seconds"] - drawing["measured_seconds"], 2
                )
                row["phases"] = {"references": drawing, **row["phases"]}
                row["total_s"] = round(sum(p["seconds"] for p in row["phases"].values()), 1)
        row["wall_s"] = round(time.perf_counter() - t0, 1)  # this run's own wall time (measured steps only)
    row |= {
        "full": full,
        "build_s": round(build, 2),
        "rss_after_build_mib": round(rss_built, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    if device == "cuda":
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2, help="measured steps per phase (median taken)")
    parser.add_argument("--full", action="store_true", help="run every default config to the end (a GPU)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--note", default="", help="free text stored with the result (e.g. machine load)")
    parser.add_argument("--out", default="train_timing", help="results name (bench/results/NAME.json)")
    args = parser.parse_args()
    if args.steps < 1 or args.threads < 1:
        parser.error(f"--steps {args.steps} --threads {args.threads}: give 1 or more of each")
    if not args.out or Path(args.out).name != args.out:
        parser.error(f"--out {args.out!r}: give a results name (bench/results/NAME.json), not a path")
    torch.set_num_threads(args.threads)
    common = ["--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
    common += ["--dtype", args.dtype] + (["--full"] if args.full else [])
    if args.method:
        print(json.dumps(run_method(args.method, args.steps, args.full, args.device, args.dtype)))
        return
    from record import save
    from render import write_markdown

    rows = {}
    for method in args.methods:
        load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
        cmd = [sys.executable, __file__, "--method", method, *common]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[method] = json.loads(out.strip().splitlines()[-1]) | {"load_before": " ".join(load)}
        print(json.dumps(rows[method]), file=sys.stderr)
    result: dict[str, Any] = {
        "what": (
            f"forgetting {CONCEPT[0]!r} ({CONCEPT[1]}) on the SD-1.5 architecture at random init, {PIXELS} px "
            f"references, {args.dtype} on {args.device} (FMN float32), real CLIP tokenizer; plain = the default "
            "fmnpatch train, "
            "robust = the default --robust, fmn = FMN's recipe (35 steps x batch 1, AdamW over the whole UNet), "
            "bare = the default fmnpatch train without --images (references: image x sampler steps it draws), "
            f"te-rounds = plain, then issue 30's text-encoder rounds ({TE})"
        ),
        "note": args.note,
        "measured_steps": None if args.full else args.steps,
        "rows": list(rows.values()),
    }
    fmn = rows.get("fmn")
    for method in ("plain", "robust"):
        if fmn and method in rows:
            result.setdefault("total_ratio", {})[method] = round(rows[method]["total_s"] / fmn["total_s"], 3)
            peak = "peak_gpu_mib" if "peak_gpu_mib" in fmn else "peak_rss_mib"
            result.setdefault("memory_ratio", {})[method] = round(rows[method][peak] / fmn[peak], 3)
    for other in ("robust", "bare", "te-rounds"):
        if "plain" in rows and other in rows:
            result[f"{other}_over_plain"] = round(rows[other]["total_s"] / rows["plain"]["total_s"], 3)
    if {"plain", "robust", "te-rounds"} <= rows.keys():  # the robust run plus the same text-encoder phases
        te = sum(p["seconds"] for k, p in rows["te-rounds"]["phases"].items() if k.startswith("te "))
        result["robust-te_over_plain"] = round((rows["robust"]["total_s"] + te) / rows["plain"]["total_s"], 3)
    save(args.out, result)
    if args.out == "train_timing":
        write_markdown()
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    from record import run_script

    run_script(main)
