"""BENCHMARKS.md sections of the MMDiT families (SD3/3.5, Flux): real-size stand-in counts and the toy MMDiT.

A module of the renderer, not a script: `python bench/render.py` writes these sections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Reader = Callable[[str], dict[str, Any] | None]


def mmdit_sections(read: Reader, provenance: Callable[[dict[str, Any]], str]) -> list[str]:
    return (
        toy_sd3_section(read, provenance)
        + robust_section(read, provenance)
        + levers_section(read)
        + sizes_section(read, provenance)
    )


def robust_section(read: Reader, provenance: Callable[[dict[str, Any]], str]) -> list[str]:
    record = read("mmdit_robust")
    if not record:
        return []
    lines = [
        "## Adversarial rounds on the toy MMDiT (`bench/mmdit_robust.py`): why `--robust` is refused there",
        "",
        "One patch of toy-sd3 per row, each its own run (command, date and revision below the table). Round 0 is the "
        "plain from-zero patch (150 x 8, pool 256, preservation 100); each later round learns a Concept Inversion "
        "token against the patch as it stands (100 x 2), then trains 50 more steps on the concept's prompts plus what "
        "the variant adds. Scored on 2 seeds (16 images of the concept: one image is 6.25 points): Acc_erased, "
        "Acc_kept ratio, and Concept Inversion from the anchor at the harness's default budget (1x: 200 steps of 8) "
        "and twice its steps.",
        "",
        "| # | variant | what it changes | Acc_erased | Acc_kept ratio | inversion 1x | inversion 2x | samples "
        "| train time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(record["rows"], 1):
        changes = ", ".join(f"{k}={v}" for k, v in row["changes"].items())
        about = row["about"] + (f" ({changes})" if changes else "")
        lines.append(
            f"| {i} | {row['variant']} | {about} | {row['acc']:.0%} | {row['kept']:.1%} | "
            f"{row['ci']['1x'][0]:.0%} | {row['ci']['2x'][0]:.0%} | {sum(row['samples'].values())} | "
            f"{row['train_s']:.1f} |"
        )
    lines.append("")
    lines += [f"{i}. {provenance(row)}" for i, row in enumerate(record["rows"], 1)]
    for probe in record.get("probes", []):
        lines += [
            "",
            f"Where the attack's {probe['concept']} comes from: the plain patch applied, the measuring Concept "
            "Inversion token learned against it, then the bench's prompts drawn with the text states and the pooled "
            f"embedding taken from different prompts ({probe['images']} images each; the pipeline called with the "
            "embeddings directly, an empty negative prompt, seeds 0 and 1, so the first row is not the harness's "
            f"figure; the anchor's own prompts draw {probe['concept']} too). {provenance(probe)}",
            "",
            "| text states from | pooled embedding from | Acc | M-Score |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['text']} | {r['pooled']} | {r['acc']:.0%} | {r['m_score']:.3f} |" for r in probe["rows"]
        ]
    return [*lines, ""]


def levers_section(read: Reader) -> list[str]:
    record = read("toy_sd3_levers")
    if not record:
        return []
    lines = [
        "## What makes a toy-sd3 patch forget (`bench/toy_sd3_levers.py`)",
        "",
        "One patch per row, trained from zero on toy-sd3 with the `TrainConfig` fields shown (others: the defaults",
        "of the row's revision; the budget fields in effect are all shown) and",
        "scored on ConceptBench-toy (20 sampler steps, guidance 5, seeds 0-2: 24 images per concept, so one image",
        "is 4.2 points). Padding: the re-steering mask also covers every part's padding; draws: denoiser passes per",
        "preserve prompt recording the text stream. Each row: its own command, on the machine and revision shown.",
        "",
        "| tag | erased | config | padding | draws | Acc | alias | kept vs base | train s | command, git |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        config = ", ".join(f"{k}={v}" for k, v in r["set"].items()) or "defaults"
        acc = ", ".join(f"{c} {v:.1%}" for c, v in r["acc"].items())
        alias = ", ".join(f"{c} {v:.1%}" for c, v in r["alias"].items() if v is not None) or "-"
        m = r["meta"]
        lines.append(
            f"| {r['tag']} | {' '.join(r['concepts'])} | {config} | {'yes' if r['padding'] else 'no'} | "
            f"{r['draws']} | {acc} | {alias} | {r['kept_ratio']:.1%} | {r['train_s']:.0f} | "
            f"`{m['command']}`, {m['git_revision']} |"
        )
    return [*lines, ""]


def sizes_section(read: Reader, provenance: Callable[[dict[str, Any]], str]) -> list[str]:
    record = read("mmdit_sizes")
    if not record:
        return []
    rows = record["result"]["rows"]
    lines = [
        "## MMDiT stand-ins: targets and patch sizes (`bench/mmdit_sizes.py`)",
        "",
        provenance(record),
        "",
    ]
    lines += [
        "Transformers built on the meta device from the published configs (shapes only); a patch of rank r is",
        "written to disk for its real size. Targets: the text stream's `attn.add_k_proj` / `add_v_proj` of every",
        "joint (SD3) or double-stream (Flux) block.",
        "",
        "| model | ModelSpec id | joint blocks | targets (out x in) | rank | parameters | file size |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['architecture']} | {r['joint_blocks']} | {r['targets']} "
            f"({', '.join(r['target_shape'])}) | {r['rank']} | {r['parameters']:,} | {r['bytes'] / 1024:,.1f} KiB |"
        )
    lines += ["", "Left out, by design:", ""]
    for r in rows:
        if r["rank"] != 1:
            continue
        out = r["left_out"]
        if out["attn2_image_only"]:
            lines.append(
                f"- {r['model']}: {out['attn2_image_only']} `attn2` K/V projections (image tokens only)."
            )
        if out["single_stream_kv"]:
            lines.append(
                f"- {r['model']}: {out['single_stream_kv']} single-stream `to_k`/`to_v`: they project [text, image]"
                f" together, and at {record['result']['pixels']} px with {r['text_tokens']} text tokens "
                f"{r['single_stream_image_row_share']:.1%} of the rows a LoRA there moves are image rows."
            )
    return [*lines, ""]


def toy_sd3_section(read: Reader, provenance: Callable[[dict[str, Any]], str]) -> list[str]:
    record = read("toy_sd3_quality")
    if not record:
        return []
    r = record["result"]
    lines = ["## Forgetting on the toy MMDiT beside the UNet toy (`bench/toy_sd3_quality.py`)", ""]
    lines += [provenance(record), ""]
    lines += [
        f"Both toy models judged by the toy judge on ConceptBench-toy ({r['sampler']['steps']} sampler steps,"
        f" guidance {r['sampler']['guidance']}, seeds {r['sampler']['seeds']}). Acc: share of the erased"
        " concept's images still judged to show it; alias: the same with its alias; kept: Acc_kept relative to"
        " the base.",
        "",
        "| model | erased | Acc (base) | Acc | alias | kept vs base | train s | patch KiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        alias = "-" if row.get("alias_acc") is None else f"{row['alias_acc']:.1%}"
        lines.append(
            f"| {row['model']} | {row['concept']} | {row['base_acc']:.1%} | {row['acc']:.1%} | {alias} | "
            f"{row['kept_ratio']:.1%} | {row['train_s']:.0f} | {row['patch_bytes'] / 1024:.1f} |"
        )
    for row in r.get("robust", []):
        lines.append("")
        if "robust_refused" in row:
            lines.append(
                f"`--robust` on {row['model']} ({row['concept']}): refused ({row['robust_refused']}). Concept "
                f"Inversion against the plain patch: {row['plain_inversion_acc']:.1%} (base: "
                f"{row['base_inversion_acc']:.1%})."
            )
            continue
        lines.append(
            f"`--robust` on {row['model']} ({row['concept']}): Concept Inversion brings the concept back in "
            f"{row['inversion_acc']:.1%} of its images (plain patch: {row['plain_inversion_acc']:.1%}; base: "
            f"{row['base_inversion_acc']:.1%}); kept {row['kept_ratio']:.1%} of base."
        )
    if r.get("dependence"):
        lines += [
            "",
            "What the text stream's K/V inputs depend on (toy MMDiT): relative spread of each block's",
            "",
        ]
        lines += ["| block | over timesteps | over images |", "|---|---|---|"]
        for d in r["dependence"]:
            lines.append(f"| {d['block']} | {d['timestep']:.1%} | {d['image']:.1%} |")
    if r.get("pooled"):
        lines += [
            "",
            "What the pooled CLIP embedding carries (toy MMDiT, base model): each concept's bench prompts drawn with",
            "the text states (what every block's `add_k_proj`/`add_v_proj` reads) and the pooled embedding (the",
            "timestep modulation of every block, which no K/V patch touches) from the concept's prompt or its",
            "anchor's. Acc: share judged to show the concept. The third column is what an ideal K/V redirect to the",
            "anchor would leave: the values have to learn to push against the pooled embedding.",
            "",
            "| concept (anchor) | both concept | states concept, pooled anchor | states anchor, pooled concept |"
            " both anchor |",
            "|---|---|---|---|---|",
        ]
        for d in r["pooled"]:
            lines.append(
                f"| {d['concept']} ({d['anchor']}) | {d['both concept']:.1%} | {d['states concept, pooled anchor']:.1%}"
                f" | {d['states anchor, pooled concept']:.1%} | {d['both anchor']:.1%} |"
            )
    return [*lines, ""]
