"""Real-size stand-ins for the MMDiT families: target discovery and patch sizes on the published transformer configs.

    python bench/mmdit_sizes.py

Each transformer (SD3 medium, SD3.5 medium / large, FLUX.1 dev / schnell; configs in bench/configs, copied from the
published `transformer/config.json`) is built on the meta device (shapes only, no weights, nothing downloaded),
wrapped by its family, and asked for its targets; a patch of zero factors at rank 1, 4 and 16 is written to learn
the real file size (tensors + header). It also counts what the families leave out: SD3.5's image-only `attn2`,
Flux's single-stream `to_k`/`to_v`, and the share of image rows among the rows a single-stream LoRA would move at
1024 px with the pipeline's default text length. Writes bench/results/mmdit_sizes.json and regenerates
BENCHMARKS.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
MODELS = {
    "SD3 medium": "sd3-medium.json",
    "SD3.5 medium": "sd35-medium.json",
    "SD3.5 large": "sd35-large.json",
    "FLUX.1 dev": "flux1-dev.json",
    "FLUX.1 schnell": "flux1-schnell.json",
}
PIXELS = 1024  # the published models' native size


def build(name: str) -> tuple[Any, Any]:
    """(family, config) of a transformer built on the meta device from its published config."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from fmn_patch.families.flux import FluxFamily
    from fmn_patch.families.sd3 import SD3Family

    config = json.loads((HERE / "configs" / MODELS[name]).read_text())
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    sd3 = config["_class_name"] == "SD3Transformer2DModel"
    with torch.device("meta"):
        model = (SD3Transformer2DModel if sd3 else FluxTransformer2DModel)(**kwargs)
    family = (SD3Family if sd3 else FluxFamily)(SimpleNamespace(transformer=model))
    return family, config


def measure(name: str, folder: Path) -> list[dict[str, Any]]:
    from fmn_patch.format import Patch, PatchInfo

    family, config = build(name)
    shapes = family.adapters.target_shapes()  # (out, in) per target
    modules = dict(family.adapters.denoiser.named_modules())
    blocks = len(family.adapters.attention_layers())
    image_tokens = (PIXELS // 16) ** 2  # VAE 8x, patch 2 (SD3) or 2x2 packing (Flux)
    text_tokens = 77 + 256 if family.name == "sd3" else 512  # the pipelines' default sequence
    single = [
        n for n in modules if n.startswith("single_transformer_blocks.") and n.endswith(("to_k", "to_v"))
    ]
    dual = [n for n in modules if n.endswith(("attn2.to_k", "attn2.to_v"))]
    rows = []
    for rank in (1, 4, 16):
        factors = {m: (torch.zeros(rank, i), torch.zeros(o, rank)) for m, (o, i) in shapes.items()}
        info = PatchInfo(method="bench", architecture=family.identity.architecture())
        path = Patch(factors, info, family.adapters.component).save(
            folder / f"{name}-{rank}.safetensors".replace(" ", "_")
        )
        rows.append(
            {
                "model": name,
                "architecture": family.identity.architecture(),
                "config": config["_source"],
                "rank": rank,
                "joint_blocks": blocks,
                "targets": len(shapes),
                "target_shape": sorted({f"{o}x{i}" for o, i in shapes.values()}),
                "parameters": sum(rank * (o + i) for o, i in shapes.values()),
                "bytes": path.stat().st_size,
                "left_out": {"attn2_image_only": len(dual), "single_stream_kv": len(single)},
                "single_stream_image_row_share": image_tokens / (image_tokens + text_tokens)
                if single
                else None,
                "text_tokens": text_tokens,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    import argparse

    from record import save
    from render import write_markdown

    from fmn_patch.cli.options import quiet_libraries

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args(argv)  # no options: --help says what the run does before it overwrites the results
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for name in MODELS for row in measure(name, Path(tmp))]
    for r in rows:
        print(f"{r['model']:15s} r={r['rank']:2d} targets {r['targets']:3d} {r['bytes'] / 1024:10.1f} KiB")
    save("mmdit_sizes", {"rows": rows, "pixels": PIXELS})
    write_markdown()


if __name__ == "__main__":
    main()
