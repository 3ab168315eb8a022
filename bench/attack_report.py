"""BENCHMARKS.md sections of the attacks on the toy world (`bench/attack_quality.py`) and of what was tried to
make a patch hold against them: robust training, its ablation and the probes (`bench/robust_quality.py`,
`bench/robust_ablation.py`, `bench/robust_probe.py`).

A module of the renderer, not a script: `python bench/render.py` writes these sections."""

from __future__ import annotations

from record import provenance_line, read_result


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
