"""BENCHMARKS.md's section of the mass-erasure bench (bench/mass_erasure.py): one row per method and N, and
the edit's residual against rank.

A module of the renderer, not a script: `python bench/render.py` writes this section."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from record import percent

NAME = "mass_erasure"  # its record: bench/results/mass_erasure.json, which bench/mass_erasure.py writes


def mass_erasure_section(read: Callable[[str], Any], provenance: Callable[[Any], str]) -> list[str]:
    """BENCHMARKS.md's section: one row per method and N, means over the draws."""
    record = read(NAME)
    if not record:
        return []
    res = record["result"]

    lines = [
        "## Mass erasure on ConceptBench-toy v2",
        "",
        "N identities erased by one patch (`bench/mass_erasure.py`), the same seeded draws for every method; each "
        "row the mean over its draws (max: over them; draw i of N is the same for every method). Kept: neighbours "
        "(one attribute from an erased identity), other identities, objects, styles, and all of them as a ratio "
        "to the base; H: harmonic mean of 1 - Acc_erased and Acc_kept. Goals at N = 50: erased <= 5% (max <= "
        "10%), neighbours >= 90%, kept >= 95% of base.",
        "",
        "| N | method | draws | erased | max | alias | neighbours | others | objects | styles | kept / base | H | "
        "size | time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = record.get("runs") or [record["meta"]]
    made_in: dict[tuple[str, int], set[int]] = {}
    for row in res["rows"]:
        made_in.setdefault((row["method"], row["n"]), set()).add(row.get("run", 0) + 1)
    for r in res["summary"]:
        size = "-" if r.get("patch_bytes") is None else f"{r['patch_bytes'] / 1024:.0f} kB"
        mark = f" ({', '.join(map(str, sorted(made_in[(r['method'], r['n'])])))})" if len(runs) > 1 else ""
        lines.append(
            f"| {r['n']} | {r['method']}{mark} | {r['draws']} | {percent(r['acc_erased'])} | "
            f"{percent(r['acc_erased_max'])} | "
            f"{percent(r.get('alias'))} | {percent(r['neighbours_kept'])} | {percent(r['others_kept'])} | "
            f"{percent(r['objects_kept'])} | {percent(r['styles_kept'])} | {percent(r['kept_ratio'])} | "
            f"{r['h_score']:.3f} | {size} | {r['seconds']:.1f} s |"
        )
    if len(runs) > 1:
        lines += [""] + [f"- ({k}) " + provenance({"meta": meta}) for k, meta in enumerate(runs, 1)] + [""]
    else:
        lines += ["", "- " + provenance(record), ""]
    curve = res.get("rank_curve")
    if curve:
        lines += [
            f"`edit` of the first N = {curve['concepts']} draw at each rank: the relative residual of the "
            "factored delta (over all layers / the worst layer), and the patch size; `auto` picks each layer's "
            "smallest rank within its target.",
            "",
            "| rank | residual | worst layer | ranks (min/median/max) | size |",
            "|---|---|---|---|---|",
        ]
        for row in [*curve["fixed"], *curve["auto"]]:
            rank = row["rank"] if row["rank"] != "auto" else f"auto ({row.get('max_residual', '')})"
            spread = row["ranks"]
            lines.append(
                f"| {rank} | {row['residual']:.3f} | {row['worst']:.3f} | "
                f"{spread['min']}/{spread['median']}/{spread['max']} | {row['bytes'] / 1024:.0f} kB |"
            )
        lines.append("")
    return lines


def _bold(text: str, bold: bool) -> str:
    return f"**{text}**" if bold else text


#: The README's columns: (method in the results, heading).
README_COLUMNS = (
    ("edit", "edit"),
    ("edit w=10", "edit at 10"),
    ("train", "train"),
    ("fmn", "FMN"),
    ("uce", "UCE"),
    ("speed", "SPEED"),
    ("mace", "MACE"),
)
README_START = "<!-- mass erasure table: bench/mass_erasure_report.py -->\n"
README_END = "<!-- end of mass erasure table -->"


def readme_table(record: dict[str, Any]) -> str:
    """The README's table from the results' summary: per N, erased / kept, neighbours kept, H (the best in bold)
    and the draws each column averages."""
    summary = {(line["method"], line["n"]): line for line in record["result"]["summary"]}
    sizes = sorted({n for _, n in summary})
    head = [
        "| N | | " + " | ".join(h for _, h in README_COLUMNS) + " |",
        "|---|---|" + "---|" * len(README_COLUMNS),
    ]
    rows = []
    for n in sizes:
        cells = [summary.get((m, n)) for m, _ in README_COLUMNS]
        best = max((c["h_score"] for c in cells if c), default=None)
        shows: dict[str, Callable[[dict[str, Any]], str]] = {
            "erased / kept": lambda c: f"{percent(c['acc_erased'])} / {percent(c['kept_ratio'])}",
            "neighbours kept": lambda c: percent(c["neighbours_kept"]),
            "H": lambda c: _bold(f"{c['h_score']:.3f}", c["h_score"] == best),  # noqa: B023 - called in this pass
            "draws": lambda c: str(c["draws"]),
        }
        for label, show in shows.items():
            rows.append(f"| {n} | {label} | " + " | ".join(show(c) if c else "-" for c in cells) + " |")
    return "\n".join(head + rows)


if __name__ == "__main__":
    import argparse
    import json
    from pathlib import Path

    argparse.ArgumentParser(
        description="Rewrite the README's mass-erasure table from bench/results/mass_erasure.json."
    ).parse_args()
    here = Path(__file__).parent
    readme = here.parent / "README.md"
    text = readme.read_text()
    table = readme_table(json.loads((here / "results" / f"{NAME}.json").read_text()))
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:start] + table + "\n" + text[end:])
