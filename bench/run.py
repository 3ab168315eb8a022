"""fmn-patch benchmarks: every number from a real run, timings as medians, comparisons measured side by side.

    python bench/run.py          # quick: patch sizes + inference overhead on the small model (a minute or two)
    python bench/run.py --full   # adds apply/fuse/merge latency on a full-size SD-1.5-architecture UNet

Writes bench/results/<section>.json (with the command, date, machine, torch version and git revision) and
regenerates BENCHMARKS.md from every results file present.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from fmn_patch import Patch, PatchInfo, apply_patches, fuse_patches, load_base, merge_patches, remove_patches
from fmn_patch.cli.options import quiet_libraries
from fmn_patch.errors import FmnPatchError
from fmn_patch.families.unet import find_targets
from fmn_patch.toy.paths import toy_pipeline_path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from record import save  # noqa: E402  (sibling script modules)
from render import write_markdown  # noqa: E402

ARCHITECTURES = {"SD-1.5": "sd15.json", "SD-2.1": "sd21.json", "SDXL": "sdxl.json"}


def toy_path() -> Path:
    """The committed toy pipeline's folder; raises when it is not built."""
    path = toy_pipeline_path()
    if not (path / "model_index.json").exists():
        raise FmnPatchError(f"no toy pipeline at {path}; train it with `make toy-model`")
    return path


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def unet_from_config(name: str, device: str = "meta") -> Any:
    from diffusers import UNet2DConditionModel

    config = {
        k: v for k, v in json.loads((HERE / "configs" / name).read_text()).items() if not k.startswith("_")
    }
    with torch.device(device):
        return UNet2DConditionModel(**config)


def random_factors(unet: Any, rank: int, seed: int = 0, scale: float = 0.3) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    factors = {}
    for module, layer in find_targets(unet).items():
        a = torch.randn(rank, layer.in_features, generator=gen) * scale / layer.in_features**0.5
        b = torch.randn(layer.out_features, rank, generator=gen) * scale
        factors[module] = (a, b)
    return factors


def bench_sizes() -> dict[str, Any]:
    """Patch file size per architecture and rank (UNets built on the meta device: shapes only, no weights)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, config in ARCHITECTURES.items():
            unet = unet_from_config(config)
            targets = find_targets(unet)
            for rank in (1, 4, 16):
                patch = Patch(random_factors(unet, rank), PatchInfo(method="bench"))
                path = patch.save(Path(tmp) / f"{arch}-{rank}.safetensors")
                rows.append(
                    {
                        "architecture": arch,
                        "rank": rank,
                        "modules": len(targets),
                        "parameters": patch.num_parameters(),
                        "bytes": path.stat().st_size,
                    }
                )
    return {"rows": rows}


def bench_inference(repeats: int) -> dict[str, Any]:
    """Images/s of base, patched-unfused and fused, measured interleaved in one run on the small model."""
    if (toy_pipeline_path() / "model_index.json").exists():
        ref = "toy"
    else:
        from fmn_patch.testing.tiny import build_sd

        ref = str(build_sd("sd1", Path(tempfile.mkdtemp()) / "tiny"))
    pipes = {"base": load_base(ref), "unfused": load_base(ref), "fused": load_base(ref)}
    patch = Patch(random_factors(pipes["base"].family.adapters.denoiser, 4), PatchInfo(method="bench"))
    apply_patches(pipes["unfused"], [patch])
    fuse_patches(pipes["fused"], [patch])
    steps, batch = 20, 8
    prompt = ["a red circle"] * batch

    def run(pipe: Any) -> None:
        pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt")

    for pipe in pipes.values():
        run(pipe)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in pipes}
    for _ in range(repeats):
        for name, pipe in pipes.items():
            times[name].append(median_time(functools.partial(run, pipe), 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": ref if ref == "toy" else "tiny random SD-1.x (toy model not built)",
        "steps": steps,
        "batch": batch,
        "repeats": repeats,
        "images_per_s": {k: batch / v for k, v in med.items()},
        "ratio_vs_base": {k: med["base"] / v for k, v in med.items()},
    }


def bench_operations(repeats: int) -> dict[str, Any]:
    """Apply / remove / fuse / merge latency on a full-size, random-initialised SD-1.5-architecture pipeline UNet."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    unet = unet_from_config("sd15.json", device="cpu")

    class UNetOnly(StableDiffusionLoraLoaderMixin):  # the public mixin, with a UNet and nothing else
        _lora_loadable_modules: ClassVar[list[str]] = ["unet"]

        def __init__(self, unet: Any) -> None:
            self.unet = unet
            self.text_encoder = None
            self.hf_device_map = None  # diffusers' LoRA loader checks a pipeline's components for offloading
            self.components = {"unet": unet}

    holder = UNetOnly(unet)
    patches = [Patch(random_factors(unet, 4, seed=s), PatchInfo(method="bench")) for s in range(2)]
    rows: dict[str, float] = {}
    rows["apply_2_patches_s"] = median_time(
        lambda: remove_patches(holder, apply_patches(holder, patches)), repeats
    )
    rows["merge_cat_s"] = median_time(lambda: merge_patches(patches), repeats)
    rows["merge_svd_rank8_s"] = median_time(lambda: merge_patches(patches, rank=8), repeats)
    with tempfile.TemporaryDirectory() as tmp:
        rows["save_patch_s"] = median_time(
            lambda: patches[0].save(Path(tmp) / "p.safetensors", overwrite=True), repeats
        )
        rows["load_patch_s"] = median_time(lambda: Patch.load(Path(tmp) / "p.safetensors"), repeats)
    return {"architecture": "SD-1.5 UNet (random init)", "rank": 4, "repeats": repeats, "seconds": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="also run the full-size sections")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--render", action="store_true", help="only regenerate BENCHMARKS.md from the results"
    )
    args = parser.parse_args()
    if args.render:
        write_markdown()
        print(HERE.parent / "BENCHMARKS.md")
        return
    quiet_libraries()
    save("sizes", bench_sizes())
    save("inference", bench_inference(args.repeats))
    if args.full:
        save("operations", bench_operations(args.repeats))
    write_markdown()
    print(HERE.parent / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
