"""Training cost at full size: our re-steering patch vs the FMN recipe's whole-UNet step, side by side in one run.

    python bench/train_timing.py                     # SD-1.5 architecture, 512 px, batch 1, 3 steps each
    python bench/train_timing.py --steps 5 --threads 2

Builds, without any download of weights, a real ``StableDiffusionPipeline`` at random init: the SD-1.5 UNet from
``bench/configs/sd15.json`` (860M parameters), an SD-1.5-size CLIP text encoder, an SD-1.5-shaped VAE, and the real
CLIP tokenizer (from the open_clip wheel; see ``bench/edit_timing.py``), so "Elon Musk" has its real tokens and
positions. The compute is real even though the weights are not. Two reference images (noise, 512 px) stand in for
the concept's pictures; both methods read the same folder.

Each method runs in its own process (so that its peak memory, max RSS, is its own) through the library's public
entry points: ``train_patch`` (LoRA r=4 on attn2 to_k/to_v, with the denoising and preservation terms) and
``train_fmn_baseline`` (FMN's loss, AdamW over the whole UNet). Reports the median seconds per optimisation step,
peak RSS, and the ratio ours / FMN. Writes ``bench/results/train_timing.json``.
"""

from __future__ import annotations

import argparse
import json
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


def sd15_pipeline(seed: int = 0) -> Any:
    """A real StableDiffusionPipeline with SD-1.5's architecture at random init (no weights downloaded)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from edit_timing import clip_tokenizer, sd15_pipe

    tokenizer = clip_tokenizer()
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


def run_method(method: str, steps: int) -> dict[str, Any]:
    """One method in this process: build, train ``steps`` steps, report."""
    from fmn_patch.cli.options import quiet_libraries
    from fmn_patch.concepts.bench import load_bench
    from fmn_patch.methods.baseline import FMNConfig, train_fmn_baseline
    from fmn_patch.methods.resteer import TrainConfig, train_patch

    quiet_libraries()
    t0 = time.perf_counter()
    pipe = sd15_pipeline()
    build = time.perf_counter() - t0
    rss_built = peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        images = str(reference_folder(Path(tmp)))
        t0 = time.perf_counter()
        if method == "ours":
            config = TrainConfig(steps=steps, batch_size=1, bench="real")
            patch = train_patch(
                pipe,
                [CONCEPT[0]],
                config,
                categories=[CONCEPT[1]],
                images=images,
                bench=load_bench("real"),
                progress=False,
            )
            per_step = [patch.info.extra["seconds_per_step"]]  # median over the run's steps
            trainable = sum(a.numel() + b.numel() for a, b in patch.factors.values())
        else:
            report = train_fmn_baseline(
                pipe, [CONCEPT], FMNConfig(steps=steps), images=images, progress=False
            )
            per_step = [statistics.median(report.step_seconds)]
            trainable = report.trainable_parameters
        total = time.perf_counter() - t0
    return {
        "method": method,
        "seconds_per_step": round(per_step[0], 3),
        "steps": steps,
        "train_seconds_total": round(total, 2),
        "trainable_parameters": trainable,
        "build_s": round(build, 2),
        "rss_after_build_mib": round(rss_built, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3, help="optimisation steps per method (median taken)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method", choices=["ours", "fmn"], help=argparse.SUPPRESS)  # child process
    parser.add_argument("--note", default="", help="free text stored with the result (e.g. machine load)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.method:
        print(json.dumps(run_method(args.method, args.steps)))
        return
    from run import save

    rows = []
    for method in ("ours", "fmn"):
        cmd = [sys.executable, __file__, "--method", method, "--steps", str(args.steps)]
        cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    ours, fmn = rows
    result = {
        "what": (
            f"one training step, SD-1.5 architecture at random init, {PIXELS} px, batch 1, concept "
            f"{CONCEPT[0]!r} with the real CLIP tokenizer; ours = LoRA r=4 on attn2 to_k/to_v with re-steering, "
            "denoising (2 extra no-grad UNet passes) and preservation terms; "
            "fmn = FMN's loss, AdamW over the whole UNet"
        ),
        "note": args.note,
        "rows": rows,
        "ratio_step_time_ours_over_fmn": round(ours["seconds_per_step"] / fmn["seconds_per_step"], 3),
        "ratio_peak_rss_ours_over_fmn": round(ours["peak_rss_mib"] / fmn["peak_rss_mib"], 3),
    }
    save("train_timing", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
