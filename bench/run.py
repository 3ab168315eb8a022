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
from fmn_patch.evaluation.provenance import provenance
from fmn_patch.families.unet import find_targets
from fmn_patch.toy.paths import toy_pipeline_path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from mmdit_report import mmdit_sections  # noqa: E402  (a sibling script module)

RESULTS = HERE / "results"
#: TrainConfig's defaults before issue 16 (150 steps x batch 8 from zero, fresh samples every step at the base's
#: size, 100-step inner attacks of batch 8): the quality benches train them beside today's defaults.
OLD_DEFAULTS: dict[str, Any] = {
    "steps": 150,
    "batch_size": 8,
    "lr": 3e-3,
    "init": "zero",
    "pool": 0,
    "train_size": None,
    "checkpointing": False,
    "robust_attack": "inversion",
    "robust_attack_steps": 100,
    "robust_attack_batch": 8,
    "robust_attack_lr": 5e-3,
}
ARCHITECTURES = {"SD-1.5": "sd15.json", "SD-2.1": "sd21.json", "SDXL": "sdxl.json"}


def toy_path() -> Path:
    """The committed toy pipeline's folder; raises when it is not built."""
    path = toy_pipeline_path()
    if not (path / "model_index.json").exists():
        raise FmnPatchError(f"no toy pipeline at {path}; train it with `make toy-model`")
    return path


def machine() -> dict[str, Any]:
    return {**provenance(), "device": "cpu"}


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
        from fmn_patch.families.tiny import build_sd

        ref = str(build_sd("sd1", Path(tempfile.mkdtemp()) / "tiny"))
    pipes = {"base": load_base(ref), "unfused": load_base(ref), "fused": load_base(ref)}
    patch = Patch(random_factors(pipes["base"].family.denoiser, 4), PatchInfo(method="bench"))
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


def write_markdown() -> None:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py` (`make bench-quick`, `make bench`) from `bench/results/*.json`; rerun to",
        "regenerate. Timings are medians; ratios are measured side by side in the same run.",
        "",
    ]
    sizes = read_result("sizes")
    if sizes:
        lines += ["## Patch size", "", provenance_line(sizes), ""]
        lines += ["| architecture | rank | modules | parameters | file size |", "|---|---|---|---|---|"]
        for r in sizes["rows"]:
            lines.append(
                f"| {r['architecture']} | {r['rank']} | {r['modules']} | {r['parameters']:,} | "
                f"{r['bytes'] / 1024:,.1f} KiB |"
            )
        lines += [
            "",
            "For scale: the FMN release ships a whole fine-tuned pipeline (several GB) per erasure.",
            "",
        ]
    inference = read_result("inference")
    if inference:
        r = inference["result"]
        lines += ["## Inference overhead", "", provenance_line(inference), ""]
        lines += [
            f"{r['model']}, {r['steps']} steps, batch {r['batch']}, median of {r['repeats']} interleaved runs.",
            "",
            "| model | images/s | speed vs base |",
            "|---|---|---|",
        ]
        for k in ("base", "unfused", "fused"):
            lines.append(f"| {k} | {r['images_per_s'][k]:.2f} | {r['ratio_vs_base'][k]:.2f}x |")
        lines.append("")
    ops = read_result("operations")
    if ops:
        r = ops["result"]
        lines += ["## Patch operations at full size", "", provenance_line(ops), ""]
        lines += [f"{r['architecture']}, rank {r['rank']}, median of {r['repeats']}.", ""]
        lines += ["| operation | seconds |", "|---|---|"]
        lines += [f"| {k.removesuffix('_s')} | {v:.3f} |" for k, v in r["seconds"].items()]
        lines.append("")
    lines += train_quality_section()
    lines += train_cost_section()
    lines += train_timing_section()
    for dtype in ("float16", "float32"):
        lines += train_timing_section(f"train_timing_gpu_{dtype}", f"on one GPU, {dtype}")
    lines += train_timing_section("train_timing_bare", "the bare command beside the plain one, CPU")
    lines += edit_sections()
    from edit_ranks import ranks_section  # bench/edit_ranks.py: residual against rank, and rank auto

    lines += ranks_section(read_result, provenance_line)
    lines += attack_section()
    lines += correct_section()
    lines += fingerprint_section()
    from scale import scale_section  # bench/scale.py: eval on one process and on several

    lines += scale_section()
    from install import install_section  # bench/install.py: a fresh clone's install from the lock

    lines += install_section(read_result, provenance_line)
    from toy_v2_resolution import resolution_section  # bench/toy_v2_resolution.py: v2's judge at 32 or 48 px

    lines += resolution_section(read_result, provenance_line)
    from toy_v2_pilot import pilot_section  # bench/toy_v2_pilot.py: a pilot v2 model, concept by concept

    lines += pilot_section(read_result, provenance_line)
    from mass_erasure import mass_erasure_section  # bench/mass_erasure.py: N identities at once, every method

    lines += mass_erasure_section(read_result, provenance_line)
    from neighbour_weight import neighbour_section  # bench/neighbour_weight.py: keeping neighbours

    lines += neighbour_section(read_result, provenance_line)
    from toy_threads import threads_section  # bench/toy_threads.py: torch threads for toy-sized training

    lines += threads_section(read_result, provenance_line)
    lines += mmdit_sections(read_result, provenance_line)
    lines += ["", *(HERE / "defaults.md").read_text().splitlines(), ""]  # hand-kept: see its first paragraph
    (HERE.parent / "BENCHMARKS.md").write_text("\n".join(lines))


#: Fingerprints that differ from the pre-layout code on purpose: the default anchor they use changed.
INTENDED = {
    "train/bob": "toy identity anchor: train used 'person', now the bench's 'a person' (the edit's)",
    "train/five": "includes bob (anchor as above)",
    "tiny/sd1/edit": "a non-toy base with --bench toy: anchors from the bench ('shape'), before from the base ('')",
    "tiny/sd2/edit": "as tiny/sd1/edit",
    "tiny/sdxl/edit": "as tiny/sd1/edit",
}


def fingerprint_section() -> list[str]:
    """The layout change (issue 13) against the pre-layout code: same seeds, same tensors."""
    now, before = read_result("fingerprint"), read_result("fingerprint-2d7e8f9")
    if not now or not before:
        return []
    new, old = now["fingerprints"], before["fingerprints"]
    lines = [
        "## Same numbers after the layout change",
        "",
        provenance_line(now)
        + f" Compared with `{before['meta']['note']}` at {before['meta']['git_revision']}.",
        "",
        "Tensor hashes of patches made on fixed seeds (and the eval and attack reports without timings): equal "
        "hashes mean the same patches and so the same bench numbers. `bench/fingerprint.py --compare "
        "bench/results/fingerprint-2d7e8f9.json` prints this comparison.",
        "",
        "| entry | same as before | why not |",
        "|---|---|---|",
    ]
    for key in sorted(old.keys() & new.keys()):
        same = json.dumps(old[key], sort_keys=True) == json.dumps(new[key], sort_keys=True)
        lines.append(
            f"| {key} | {'yes' if same else 'no'} | {'' if same else INTENDED.get(key, 'UNEXPLAINED')} |"
        )
    lines.append("")
    return lines


def train_cost_section() -> list[str]:
    record = read_result("train_cost")
    if not record:
        return []
    r = record["result"]
    lines = ["## Cost of forgetting one toy concept", "", provenance_line(record), ""]
    lines += [f"Concept {r['concept']!r}; medians of {r['rows'][0]['runs']} runs, each in its own process."]
    if r.get("note"):
        lines += ["", f"Note: {r['note']}"]
    lines += ["", "| method | wall (s) | CPU (s) | peak RSS | patch size |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        size = f"{row['patch_bytes'] / 1024:.1f} KiB" if row["patch_bytes"] else "whole UNet"
        lines.append(
            f"| {row['method']} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | {row['peak_rss_mib']:.0f} MiB | {size} |"
        )
    lines.append("")
    return lines


def train_timing_section(name: str = "train_timing", where: str = "") -> list[str]:
    record = read_result(name)
    if not record:
        return []
    r = record["result"]
    title = "## Training cost at full size (SD-1.5 architecture" + (f", {where})" if where else ")")
    lines = [title, "", provenance_line(record), ""]
    lines += [r["what"] + ".", ""]
    if r.get("note"):
        lines += [f"Note: {r['note']}", ""]
    if "ratio_step_time_ours_over_fmn" in r:  # a result from before the per-phase record
        return [*lines, f"Step time ratio ours / FMN: {r['ratio_step_time_ours_over_fmn']:.2f}x.", ""]
    measured = r.get("measured_steps")
    lines += [
        (
            f"Each default run measured over {measured} steps per phase and extrapolated to its default sample "
            "counts (samples x seconds per sample, per phase)."
            if measured
            else "Every default run to the end; wall: the `train_patch` (or FMN) call, reference folder given, "
            "after the model was built and moved to the device."
        ),
        "",
        "| method | config | phases: samples x s/sample (+ fixed) | total (s) | wall (s) | peak RSS | "
        "after model build | load before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        parts = []
        for phase, p in row["phases"].items():
            if "default_samples" in p:
                parts.append(f"{phase} {p['default_samples']} x {p['seconds_per_sample']:.2f}")
            else:
                parts.append(f"{phase} {p['seconds']:.1f} s")
        c = row["config"]
        config = ", ".join(f"{k} {v}" for k, v in c.items())
        peak = f"{row['peak_rss_mib'] / 1024:.1f} GiB"
        if "peak_gpu_mib" in row:
            peak += f" (GPU {row['peak_gpu_mib'] / 1024:.1f} GiB)"
        lines.append(
            f"| {row['method']} | {config} | {'; '.join(parts)} | {row['total_s']:.1f} | {row['wall_s']:.1f} | "
            f"{peak} | "
            f"{row['rss_after_build_mib'] / 1024:.1f} GiB | {row.get('load_before', '')} |"
        )
    ratios = ", ".join(
        f"{m}: compute {r['total_ratio'][m]:.2f}x, peak memory {r['memory_ratio'][m]:.3f}x"
        for m in r.get("total_ratio", {})
    )
    lines += [
        "",
        f"Ratios to FMN's recipe, same run: {ratios}." if ratios else "FMN's recipe was not in this run.",
    ]
    for other in ("robust", "bare"):
        if f"{other}_over_plain" in r:
            lines.append(f"{other.capitalize()} / plain: {r[f'{other}_over_plain']:.2f}x.")
    lines.append("")
    return lines


def edit_sections() -> list[str]:
    lines: list[str] = []
    quality = read_result("edit_quality")
    if quality:
        lines += ["## Closed-form edit quality on the toy world", "", provenance_line(quality), ""]
        lines += [
            f"Judge on seeds {quality['sampler']['seeds']} x every bench prompt. Kept: Acc_kept relative to base.",
            "",
            "| erased | time (s) | Acc_erased | alias Acc_erased | kept | residual |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in quality["single"].items():
            alias = "-" if r["alias_acc"] is None else f"{r['alias_acc']:.0%}"
            lines.append(
                f"| {name} | {r['wall_s']:.2f} | {r['acc_erased']:.0%} | {alias} | "
                f"{r['acc_kept_relative']:.1%} | {r['residual']:.3f} |"
            )
        m = quality["many"]
        acc = ", ".join(f"{v:.0%}" for v in m["acc_erased"].values())
        alias = ", ".join(f"{v:.0%}" for v in m["alias_acc"].values())
        lines.append(
            f"| {', '.join(m['erased'])} | {m['wall_s']:.2f} | {acc} | {alias} | "
            f"{m['kept_relative']:.1%} ({m['kept']}) | {m['residual']:.3f} |"
        )
        styles = ", ".join(f"{k} {v:.1%}" for k, v in m["styles_relative"].items())
        colours = ", ".join(f"{k} {v:.1%}" for k, v in m["colours_relative"].items())
        lines += ["", f"Many-concept patch, relative to base: styles {styles}; colours {colours}.", ""]
    for name, title in (("edit", "SD-1.5"), ("edit_sdxl", "SDXL")):
        lines += _edit_timing_section(read_result(name), title)
    return lines


def _edit_timing_section(timing: dict[str, Any] | None, title: str) -> list[str]:
    lines: list[str] = []
    if timing:
        r = timing.get("result", timing)
        lines += [f"## Closed-form edit time at full size: {title}", "", provenance_line(timing), ""]
        if r.get("what"):
            lines += [r["what"] + ".", ""]
        if r.get("note"):
            lines += [f"Note: {r['note']}", ""]
        lines += [
            "| concepts | encode | solve | SVD | write | end to end | erase / preserve rows | peak RSS |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            t = row["seconds"]
            lines.append(
                f"| {row['concepts']} | {t['encode']:.1f} | {t['solve']:.2f} | {t['svd']:.2f} | {t['write']:.2f} | "
                f"{t['end_to_end']:.1f} | {row['rows']['erase']} / {row['rows']['preserve']} | "
                f"{row['peak_rss_mib']:.0f} MiB |"
            )
        if r.get("solve_only"):
            lines += [
                "",
                "| solve + SVD only | projections x width | rows erase / keep | rank | seconds | residual "
                "(estimated / exact) | deltas formed first (old path) |",
                "|---|---|---|---|---|---|---|",
            ]
            for row in r["solve_only"]:
                old = row.get("old", {})
                lines.append(
                    f"| {row['unet']} | {row['projections']} x {row['dim']} | {row['erase_rows']} / "
                    f"{row['keep_rows']} | {row.get('rank', '-')} | {row['solve_plus_svd_s']:.2f} | "
                    f"{row.get('residual', float('nan')):.4f} / {row.get('residual_exact', float('nan')):.4f} | "
                    f"{old.get('solve_plus_svd_s', float('nan')):.2f} s |"
                )
            lines += [
                "",
                f"Medians of {r['solve_only'][0].get('repeats', 1)} in one process at "
                f"{r['solve_only'][0].get('threads', '?')} threads.",
            ]
            if timing.get("solve_meta"):
                lines += ["", "Solve + SVD rows: " + provenance_line({"meta": timing["solve_meta"]})]
        lines.append("")
    return lines


def attack_section() -> list[str]:
    record = read_result("attack_circle")
    if not record:
        return []
    r = record["result"]
    report, budgets = r["report"], r["budgets"]
    lines = ["## Does forgetting hold? Attacks on the toy world", "", provenance_line(record), ""]
    inv, search = budgets["inversion"], budgets["search"]
    lines += [
        f"Concept {report['concept']!r}, patch: {r['patch']['method']} (default config). Acc: share of the attack's "
        "images the judge calls the concept. Budgets: Concept Inversion "
        f"{inv['steps']} steps, {inv['images']} images, {inv['num_tokens']} token(s), lr {inv['lr']}; vocabulary "
        f"search {search['length']} words, {search['seconds']:.0f} s, <= {search['max_candidates']} candidates.",
        "",
        "| attack | base | patched |",
        "|---|---|---|",
    ]
    for attack, row in report["summary"].items():
        lines.append(f"| {attack} | {row['base']:.0%} | {row['patched']:.0%} |")
    lines.append("")
    lines += ["What each attack recovered:", "", "![attack grid](bench/results/attack_circle.png)", ""]
    lines += robust_section()
    lines += robust_ablation_section()
    lines += robust_probe_section()
    return lines


def robust_ablation_section() -> list[str]:
    record = read_result("robust_ablation")
    if not record:
        return []
    lines = [
        "### Which parts of `--robust` hold (`bench/robust_ablation.py`)",
        "",
        "One patch per row, each row its own run (command, date and revision below the table). Start: old = the "
        "training defaults from before issue 16 (from zero, 150 x 8, no pool, Concept Inversion 100 x 8 between "
        "rounds), new = today's; changes: the TrainConfig fields given over it. Concept Inversion at the harness's "
        "default budget (1x: 200 steps) and twice its steps.",
        "",
        "| # | model | concept | start | changes | Acc_erased | Acc_kept ratio | inversion 1x | inversion 2x "
        "| samples | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(record["rows"], 1):
        changes = ", ".join(f"{k}={v}" for k, v in row["changes"].items()) or "-"
        lines.append(
            f"| {i} | {row['model']} | {row['concept']} | {row['start']} | {changes} | {row['acc']:.0%} | "
            f"{row['kept']:.1%} | {row['ci']['1x'][0]:.0%} | {row['ci']['2x'][0]:.0%} | "
            f"{sum(row['samples'].values())} | {row['train_s']:.1f} |"
        )
    lines.append("")
    lines += [f"{i}. {provenance_line(row)}" for i, row in enumerate(record["rows"], 1)]
    lines.append("")
    return lines


def robust_probe_section() -> list[str]:
    record = read_result("robust_probe")
    if not record:
        return []
    r = record["result"]
    lines = [
        "### What we tried to make a patch hold (`bench/robust_probe.py`)",
        "",
        provenance_line(record),
        "",
    ]
    lines += [
        f"Concept {r['concept']!r}; Concept Inversion at the harness's default budget ({r['attack']['steps']} "
        "steps). Recipes: heavier adversarial rounds. Removal: the default plain patch with the k directions of "
        "each target's output (keys and values, 64 wide on the toy) that the concept's tokens use most, relative "
        "to every other bench prompt, projected out (still a LoRA, rank r + k).",
        "",
        "| probe | patch | rank | Acc_erased | Acc_kept ratio | inversion 1x | samples | train time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        samples = sum((row.get("samples") or {}).values()) or "-"
        lines.append(
            f"| {row['part']} | {row['label']} | {row['rank']} | {row['acc_erased']:.0%} | "
            f"{row['kept_ratio']:.1%} | {row['inversion']['1x']['acc']:.0%} | {samples} | {row['seconds']:.1f} |"
        )
    lines.append("")
    return lines


def robust_section() -> list[str]:
    robust = read_result("robust")
    if not robust:
        return []
    r = robust["result"]
    lines = ["### Robust training against Concept Inversion", "", provenance_line(robust), ""]
    if "budgets" not in r:  # a result from before the budgets
        rows = [{**row, "inversion": {"1x": {"acc": row["inversion_acc"]}}} for row in r["rows"]]
        budgets = {"1x": r["attack"]["steps"]}
    else:
        rows, budgets = r["rows"], r["budgets"]
    lines += [
        "Concept Inversion: a new token learned against each model from the base's own pictures of the concept "
        f"({r['attack']['images']} images, batch {r['attack']['batch_size']}, lr {r['attack']['lr']}), at "
        + ", ".join(f"{k} = {v} steps" for k, v in budgets.items())
        + "; acc = share of the attack's images the judge calls the concept. Samples: denoiser samples the "
        "training ran (pool, steps, inner attacks).",
        "",
        "| concept | patch | Acc_erased | Acc_kept ratio | "
        + " | ".join(f"inversion {k}" for k in budgets)
        + " | samples | train time (s) |",
        "|---|---|---|---|" + "---|" * len(budgets) + "---|---|",
    ]
    for row in rows:
        inv = " | ".join(f"{row['inversion'][k]['acc']:.0%}" for k in budgets)
        samples = sum((row.get("samples") or {}).values()) or "-"
        lines.append(
            f"| {row.get('concept', r.get('concept', ''))} | {row['label']} | {row['acc_erased']:.0%} | "
            f"{row['kept_ratio']:.1%} | {inv} | {samples} | {row['seconds']:.1f} |"
        )
    lines.append("")
    return lines


def train_quality_section() -> list[str]:
    record = read_result("train_quality")
    if not record:
        return []
    r = record["result"]
    lines = ["## Forgetting quality on the toy world (train)", "", provenance_line(record), ""]
    lines += [
        f"Judge on {len(r['sampler']['seeds'])} seeds x every bench prompt, DDIM {r['sampler']['steps']} steps, "
        f"guidance {r['sampler']['guidance']}. Acc_erased: share of the erased concept's images still judged to "
        "show it (lower is better); kept ratio: Acc_kept relative to the base model over the same concepts.",
        "",
        "| method | erased | category | Acc_erased | alias Acc_erased | M-Score before -> after | Acc_kept | "
        "kept ratio | time (s) | patch size |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        erased = row["erased"]
        acc = ", ".join(f"{row['acc_erased'][e]:.0%}" for e in erased)
        alias = ", ".join(f"{v:.0%}" for v in row["alias_acc_erased"].values()) or "-"
        m = ", ".join(f"{row['m_score_before'][e]:.2f} -> {row['m_score_after'][e]:.2f}" for e in erased)
        size = f"{row['patch_bytes'] / 1024:.1f} KiB" if row["patch_bytes"] else "whole UNet"
        lines.append(
            f"| {row['method']} | {', '.join(erased)} | {', '.join(sorted(set(row['categories'])))} | {acc} | "
            f"{alias} | {m} | {row['acc_kept']:.1%} | {row['kept_ratio']:.1%} | {row['seconds']:.1f} | {size} |"
        )
    lines += _old_and_new(r["rows"])
    if r.get("grid"):
        lines += [
            "",
            "One image per concept (first prompt, first seed), base and each five-at-once model:",
            "",
        ]
        lines.append(f"![five-at-once grid](bench/results/{r['grid']})")
    lines.append("")
    return lines


def _old_and_new(rows: list[dict[str, Any]]) -> list[str]:
    """The default re-steering patch before issue 16 and now, per erased set, side by side."""
    by = {(r["method"], tuple(r["erased"])): r for r in rows}
    pairs = [
        (e, old, r)
        for (m, e), r in by.items()
        if m == "resteer" and (old := by.get(("resteer, old defaults", e))) is not None
    ]
    if not pairs:
        return []

    def cells(r: dict[str, Any]) -> str:
        acc = ", ".join(f"{r['acc_erased'][e]:.0%}" for e in r["erased"])
        alias = ", ".join(f"{v:.0%}" for v in r["alias_acc_erased"].values()) or "-"
        samples = sum((r.get("samples") or {}).values()) or "-"
        return f"{acc} | {alias} | {r['kept_ratio']:.1%} | {samples} | {r['seconds']:.1f}"

    lines = [
        "",
        "Old and new defaults side by side (samples: denoiser samples the training ran, pool and steps):",
        "",
        "| erased | old: Acc_erased | alias | kept ratio | samples | time (s) | new: Acc_erased | alias | kept ratio | "
        "samples | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {', '.join(e)} | {cells(old)} | {cells(new)} |" for e, old, new in pairs]
    return lines


def correct_section() -> list[str]:
    record = read_result("correct")
    if not record:
        return []
    r = record["result"]
    before, after = r["before"], r["after"]
    lines = ["## Concept correction on the toy world", "", provenance_line(record), ""]
    lines += [
        f"`correct_patch` on {r['concept']!r} toward {', '.join(r['variants'])}; {r['seeds']} seeds per prompt, "
        f"trained in {r['seconds']:.1f} s. Entropy of the bare concept's colours relative to log2(4); variant "
        "accuracy: share of each coloured prompt's images in its colour.",
        "",
        "| model | colour counts (bare concept) | entropy | entropy ratio | worst variant accuracy | Acc_kept |",
        "|---|---|---|---|---|---|",
    ]
    for label, s, kept in (("base", before, r["acc_kept_base"]), ("corrected", after, r["acc_kept_after"])):
        counts = ", ".join(f"{k} {v}" for k, v in s["counts"].items())
        lines.append(
            f"| {label} | {counts} | {s['entropy_bits']:.2f} bits | {s['entropy_ratio']:.1%} | "
            f"{min(s['variant_accuracy'].values()):.0%} | {kept:.1%} |"
        )
    lines += ["", f"Acc_kept ratio corrected / base: {r['kept_ratio']:.1%}.", ""]
    return lines


def read_result(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def percent(x: float | None) -> str:
    """A share for a table cell, one decimal; "-" where there is none."""
    return "-" if x is None else f"{x:.1%}"


def provenance_line(record: dict[str, Any]) -> str:
    m = record["meta"]
    return (
        f"`{m['command']}` on {m['date']}, {m['machine']}, torch {m['torch']} ({m['torch_threads']} threads), "
        f"git {m['git_revision']}." + (f" ({m['note']})" if m.get("note") else "")
    )


def save(name: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"meta": machine(), "result": result}
    if "rows" in result:
        record["rows"] = result["rows"]
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS / name}.json", file=sys.stderr)


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
