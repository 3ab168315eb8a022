"""The attack report: every attack's result on each model, as JSON (stable names), markdown and a grid."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..concepts.bench import Concept
from ..evaluation.grid import image_grid
from .attack import AttackResult
from .config import AttackConfig


@dataclass
class AttackReport:
    """Every attack's result on each model. ``to_dict`` names are stable (``fmnpatch attack --json``)."""

    concept: Concept
    bench: str
    patches: list[str]
    config: AttackConfig
    results: list[AttackResult]
    seconds: float
    grid: Image.Image | None = None

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.results))

    def summary(self) -> dict[str, dict[str, float]]:
        """acc of each attack on each model: {attack: {model: acc}}."""
        out: dict[str, dict[str, float]] = {}
        for r in self.results:
            out.setdefault(r.attack, {})[r.model] = r.acc
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "concept": self.concept.name,
            "category": self.concept.category,
            "bench": self.bench,
            "patches": self.patches,
            "attacks": list(self.config.attacks),
            "sampler": dataclasses.asdict(self.config.sampler),
            "seed": self.config.seed,
            "summary": self.summary(),
            "results": [r.to_dict() for r in self.results],
            "seconds": self.seconds,
        }

    def to_markdown(self) -> str:
        models = self.models
        lines = [
            f"Attacks on {self.concept.name} ({self.concept.category}), bench {self.bench}; acc = share of images "
            "judged to show the concept.",
            "",
            "| attack | " + " | ".join(f"acc {m} | M-Score {m}" for m in models) + " | budget |",
            "|---|" + "---|---|" * len(models) + "---|",
        ]
        for attack, per_model in _by_attack(self.results).items():
            cells = [attack]
            for m in models:
                r = per_model.get(m)
                cells += [f"{r.acc:.1%}", f"{r.m_score:.3f}"] if r else ["-", "-"]
            first = next(iter(per_model.values()))
            cells.append(", ".join(f"{k} {v}" for k, v in first.budget.items()) or "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for r in self.results:
            if r.attack == "search":
                lines.append(
                    f"- search on {r.model}: {r.details['prompt']!r}, loss {r.details['loss']:.4f} (start "
                    f"{r.details['start_loss']:.4f}), {r.details['candidates']} candidates, "
                    f"{r.details['restarts']} restarts, {r.details['seconds']:.1f} s, stopped by "
                    f"{r.details['stopped']}"
                )
            if r.attack == "inversion":
                lines.append(
                    f"- inversion on {r.model}: token {r.details['token']}, final loss {r.details['final_loss']:.4f}, "
                    f"{r.details['learn_seconds']:.1f} s"
                )
        return "\n".join(lines) + "\n"


def _by_attack(results: Sequence[AttackResult]) -> dict[str, dict[str, AttackResult]]:
    out: dict[str, dict[str, AttackResult]] = {}
    for r in results:
        out.setdefault(r.attack, {})[r.model] = r
    return out


def attack_grid(results: Sequence[AttackResult], per_cell: int = 4) -> Image.Image:
    """One row per attack, `per_cell` columns per model: what each attack made each model draw."""
    rows = _by_attack(results)
    models = list(dict.fromkeys(r.model for r in results))
    blank = torch.ones_like(next(r.samples for r in results if r.samples is not None)[0])  # (3, H, W) white
    columns: dict[str, torch.Tensor] = {}
    for m in models:
        for k in range(per_cell):
            cells = [_cell(per_model.get(m), k, blank) for per_model in rows.values()]
            columns[f"{m} {k + 1}"] = torch.stack(cells)
    return image_grid(columns, list(rows))


def _cell(result: AttackResult | None, k: int, blank: torch.Tensor) -> torch.Tensor:
    samples = result.samples if result is not None else None
    return samples[k] if samples is not None and k < len(samples) else blank
