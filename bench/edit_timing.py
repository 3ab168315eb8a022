"""Timing of ``fmnpatch edit`` at full size: SD-1.5-architecture UNet and text encoder, real CLIP tokenizer.

    python bench/edit_timing.py                      # 1, 100, 1000 concepts (each in a fresh process)
    python bench/edit_timing.py --counts 1 100       # fewer
    python bench/edit_timing.py --arch sdxl          # SDXL-size: both text encoders, 140 projections

Builds, without any download of weights: the SD-1.5 UNet from ``bench/configs/sd15.json`` on the meta device with
real (random) weights only for its 32 cross-attention key/value projections; a CLIPTextModel of SD-1.5 size
(ViT-L/14 text tower: 12 layers, width 768) at random init; and the real CLIP tokenizer, whose BPE merges ship in the
``open_clip_torch`` wheel (``pip download --no-deps`` into a cache folder; never installed). Token counts and
positions are therefore real; the states are random, which does not change the cost.

Each count runs in its own process so that its peak memory (max RSS) is its own. Reports the split
encode / solve / SVD / write and end-to-end (model build excluded), and checks on the model that CLIP's causal
mask makes padding irrelevant to the real tokens' states. Writes ``bench/results/edit.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from fmn_patch.toy.vocab import byte_symbols

HERE = Path(__file__).parent
CACHE = Path.home() / ".cache" / "fmn-patch" / "open_clip"
BPE = "open_clip/bpe_simple_vocab_16e6.txt.gz"


def clip_tokenizer(cache: Path = CACHE) -> Any:
    """The real CLIP tokenizer (49,408 tokens) from the open_clip wheel's BPE file, by CLIP's own recipe."""
    from transformers import CLIPTokenizer

    folder = cache / "tokenizer"
    if not (folder / "merges.txt").exists():
        wheels = sorted(cache.glob("open_clip_torch-*.whl"))
        if not wheels:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "open_clip_torch", "-d", str(cache)]
            subprocess.run(cmd, check=True, capture_output=True)
            wheels = sorted(cache.glob("open_clip_torch-*.whl"))
        with zipfile.ZipFile(wheels[-1]) as wheel:
            lines = gzip.decompress(wheel.read(BPE)).decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
        symbols = byte_symbols()  # CLIP's byte stand-ins, as the toy vocab uses them
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(
            json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False)
        )
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    assert tok("Elon Musk").input_ids == [49406, 20406, 19063, 49407], "not CLIP's tokenizer"
    return tok


def _unet(config_name: str) -> Any:
    """A full-size UNet on the meta device with real random weights only for its attn2 to_k/to_v."""
    from diffusers import UNet2DConditionModel

    from fmn_patch.families.unet import find_targets

    config = {
        k: v for k, v in json.loads((HERE / "configs" / config_name).read_text()).items() if k[0] != "_"
    }
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    for layer in find_targets(unet).values():
        layer.weight = torch.nn.Parameter(
            torch.randn(layer.out_features, layer.in_features) / layer.in_features**0.5
        )
    return unet


def _text_encoder(width: int, layers: int, heads: int, act: str, pad: int, projection: bool = False) -> Any:
    """A CLIP text tower of the given size at random init (CLIP's vocabulary, 77 positions)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def sd15_pipe(tokenizer: Any, seed: int = 0) -> Any:
    """A stand-in pipeline: SD-1.5 UNet (meta, with real random attn2 to_k/to_v) and an SD-1.5-size text encoder."""
    torch.manual_seed(seed)
    unet = _unet("sd15.json")
    encoder = _text_encoder(768, 12, 12, "quick_gelu", pad=49407)  # CLIP ViT-L/14's text tower
    # name_or_path: what the patch header records as the base model (as_base finds the UNet family by pipe.unet)
    return SimpleNamespace(unet=unet, text_encoder=encoder, tokenizer=tokenizer, name_or_path="sd15-random")


def sdxl_pipe(tokenizer: Any, seed: int = 0) -> Any:
    """A stand-in SDXL pipeline: SDXL UNet (meta, with real random attn2 to_k/to_v) and SDXL-size text encoders.

    text_encoder: CLIP ViT-L/14's text tower (12 layers, width 768); text_encoder_2: OpenCLIP ViT-bigG/14's
    (32 layers, width 1280, with projection), both at random init. The UNet reads both encoders' penultimate
    states, concatenated (768 + 1280 = 2048), as SDXL's ``encode_prompt`` gives them. tokenizer_2 is the same
    BPE with SDXL's pad token ("!", id 0).
    """
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    unet = _unet("sdxl.json")
    first = _text_encoder(768, 12, 12, "quick_gelu", pad=49407)
    second = _text_encoder(1280, 32, 20, "gelu", pad=0, projection=True)
    folder = CACHE / "tokenizer"
    tokenizer_2 = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77, pad_token="!"
    )
    return SimpleNamespace(
        unet=unet,
        text_encoder=first,
        text_encoder_2=second,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        name_or_path="sdxl-random",  # the UNet family reads SDXL from text_encoder_2 (and tokenizer_2)
    )


PIPES = {"sd15": sd15_pipe, "sdxl": sdxl_pipe}
WHAT = {
    "sd15": "fmnpatch edit on an SD-1.5-architecture UNet + SD-1.5-size CLIP text encoder (random init), real "
    "CLIP tokenizer; identity templates of the real ConceptBench; times in seconds, model build excluded",
    "sdxl": "fmnpatch edit on an SDXL-architecture UNet + SDXL-size text encoders (CLIP ViT-L/14 and OpenCLIP "
    "ViT-bigG/14 text towers, random init), real CLIP tokenizer; identity templates of the real ConceptBench; "
    "times in seconds, model build excluded",
}


def concept_names(tokenizer: Any, count: int) -> list[str]:
    """The real bench's concepts, then two-word names from the vocabulary (deterministic)."""
    from fmn_patch.concepts.bench import load_bench

    names = [c.name for c in load_bench("real").concepts]
    words = [w for w in _vocab_words(tokenizer) if len(w) > 3][200:]
    i = 0
    while len(names) < count:
        names.append(f"{words[i].capitalize()} {words[(7 * i + 3) % len(words)].capitalize()}")
        i += 1
    return names[:count]


def _vocab_words(tokenizer: Any) -> list[str]:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return [t[:-4] for t, _ in vocab if t.endswith("</w>") and t[:-4].isalpha()]


def check_causal_padding(pipe: Any) -> float:
    """Max |difference| of the real tokens' states between true-length and padded-to-77 encoding."""
    from fmn_patch.families.base import as_base

    text = as_base(pipe).family.text.text_states()
    prompts = ["a photo of Elon Musk", "a landscape painted by Claude Monet", "a cat"]
    short, full = text.encode(prompts, 0), text.encode(prompts, 77)
    return max(
        float((short[i, :n] - full[i, :n]).abs().max())
        for i, n in enumerate(len(x) for x in text.ids(prompts))
    )


def run_one(count: int, config_overrides: dict[str, Any], arch: str = "sd15") -> dict[str, Any]:
    from fmn_patch.methods.edit import EditConfig, edit_patch

    t0 = time.perf_counter()
    tokenizer = clip_tokenizer()
    pipe = PIPES[arch](tokenizer)
    build = time.perf_counter() - t0
    names = concept_names(tokenizer, count)
    config = EditConfig(**config_overrides)
    t0 = time.perf_counter()
    patch = edit_patch(pipe, names, config=config, category="identity")
    edit_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        patch.save(Path(tmp) / "p.safetensors")
        write = time.perf_counter() - t0
        size = (Path(tmp) / "p.safetensors").stat().st_size
    seconds = dict(patch.info.extra["seconds"])
    seconds["write"] = write
    seconds["end_to_end"] = edit_s + write
    return {
        "arch": arch,
        "concepts": count,
        "config": config_overrides,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "solve_plus_svd_s": round(seconds["solve"] + seconds["svd"], 3),
        "build_s": round(build, 2),
        "rows": patch.info.extra["rows"],
        "residual": round(patch.info.extra["residual"], 4),
        "residual_kind": patch.info.extra["residual_kind"],
        "rank": patch.rank,
        "patch_bytes": size,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "causal_padding_max_abs_diff": check_causal_padding(pipe),
    }


def solve_only(
    config_name: str, erase_rows: int, keep_rows: int, rank: int = 8, repeats: int = 1
) -> dict[str, Any]:
    """Solve + SVD alone on a full-size UNet's projections, with random text states of the right width.

    Times, as medians over ``repeats``, the path ``Editor`` takes for wide layers (the shared solve, then
    ``factorize_products``: no delta formed, residuals estimated) and the old one (every delta W P formed, then
    ``factorize``, exact residuals), and measures the estimated total residual against the exact one.
    """
    from statistics import median

    from diffusers import UNet2DConditionModel

    from fmn_patch.families.unet import find_targets
    from fmn_patch.format.lowrank import factorize, factorize_products
    from fmn_patch.methods.solver import NormalEquations, layer_delta

    config = {
        k: v for k, v in json.loads((HERE / "configs" / config_name).read_text()).items() if k[0] != "_"
    }
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(x.out_features, x.in_features, generator=g) for x in find_targets(unet).values()]
    dim = weights[0].shape[1]
    normal = NormalEquations(dim)
    for start in range(0, erase_rows, 4096):
        c = torch.randn(min(4096, erase_rows - start), dim, generator=g)
        normal.add_erase(c, c + 0.1 * torch.randn(c.shape, generator=g))
    for start in range(0, keep_rows, 4096):
        normal.add_keep(torch.randn(min(4096, keep_rows - start), dim, generator=g))
    times: dict[str, list[float]] = {"solve": [], "svd": [], "old_solve": [], "old_svd": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = normal.solve(0.1).float()
        t1 = time.perf_counter()
        new = factorize_products(weights, p, rank)
        t2 = time.perf_counter()
        p = normal.solve(0.1).float()
        deltas = [layer_delta(w, p) for w in weights]
        t3 = time.perf_counter()
        old = [factorize(d, rank) for d in deltas]
        t4 = time.perf_counter()
        for key, t in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[key].append(t)
    s = {k: median(v) for k, v in times.items()}
    exact = [_squares(d, a, b) for d, (a, b, _, _) in zip(deltas, new, strict=True)]  # the new factors' own
    return {
        "unet": config_name,
        "projections": len(weights),
        "dim": dim,
        "erase_rows": erase_rows,
        "keep_rows": keep_rows,
        "rank": rank,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "solve_s": round(s["solve"], 3),
        "svd_s": round(s["svd"], 3),
        "solve_plus_svd_s": round(s["solve"] + s["svd"], 3),
        "residual_kind": "estimate",
        "residual": round(_relative([f[2:] for f in new]), 5),
        "residual_exact": round(_relative(exact), 5),  # of the same factors, measured on the formed deltas
        "old": {  # deltas formed, then factorize: exact residuals
            "solve_s": round(s["old_solve"], 3),
            "svd_s": round(s["old_svd"], 3),
            "solve_plus_svd_s": round(s["old_solve"] + s["old_svd"], 3),
            "residual": round(_relative([f[2:] for f in old]), 5),
        },
    }


def _squares(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """||D - B A||^2 and ||D||^2, in float64."""
    return float((d.double() - b.double() @ a.double()).square().sum()), float(d.double().square().sum())


def _relative(squares: list[tuple[float, float]]) -> float:
    """||D - B A|| / ||D|| over all modules, from each module's squared residual and norm."""
    return (sum(r for r, _ in squares) / sum(t for _, t in squares)) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument(
        "--config", default="{}", help="EditConfig overrides as JSON, e.g. '{\"padding\": 0}'"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--note", default="", help="conditions of the run (e.g. other load on the machine)")
    parser.add_argument("--arch", choices=sorted(PIPES), default="sd15", help="stand-in model (default sd15)")
    parser.add_argument(
        "--solve-ranks", type=int, nargs="*", default=[8, 16], help="ranks of the solve+SVD-only rows"
    )
    parser.add_argument("--repeats", type=int, default=3, help="solve+SVD-only repeats (median)")
    parser.add_argument(
        "--solve-only",
        action="store_true",
        help="only the solve+SVD rows: replace them in --out, keep its end-to-end rows (provenance: solve_meta)",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, help="default bench/results/edit.json (sd15), edit_sdxl.json (sdxl)"
    )
    args = parser.parse_args()
    out = args.out or HERE / "results" / ("edit.json" if args.arch == "sd15" else f"edit_{args.arch}.json")
    overrides = json.loads(args.config)
    torch.set_num_threads(args.threads)
    if args.child is not None:
        from fmn_patch.cli.options import quiet_libraries

        quiet_libraries()
        print(json.dumps(run_one(args.child, overrides, args.arch)))
        return
    sys.path.insert(0, str(HERE))
    from record import machine, write_json  # bench/record.py: where this run came from

    if args.solve_only:  # keep the end-to-end rows of the file, refresh the solve+SVD rows
        record = json.loads(out.read_text()) if out.exists() else {"meta": machine(), "rows": []}
        record["solve_meta"] = machine()
    else:
        record = {
            "what": WHAT[args.arch],
            "note": args.note,
            "budgets": {"solve_plus_svd_1000_s": 2, "end_to_end_100_s": 30, "end_to_end_1000_s": 300},
            "rows": [_child_row(count, args) for count in args.counts],
        }
    record["solve_only"] = [
        solve_only(f"{args.arch}.json", 60_000, 5_000, rank, args.repeats) for rank in args.solve_ranks
    ]
    for row in record["solve_only"]:
        print(json.dumps(row), file=sys.stderr)
    record.setdefault("meta", machine())  # once every row is in, with the revision that made them
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    print(out)


def _child_row(count: int, args: argparse.Namespace) -> dict[str, Any]:
    """One count's end-to-end row, from its own process (so its peak memory is its own)."""
    cmd = [sys.executable, __file__, "--child", str(count), "--config", args.config]
    cmd += ["--threads", str(args.threads), "--arch", args.arch]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{count} concepts failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(row), file=sys.stderr)
    return row


if __name__ == "__main__":
    main()
