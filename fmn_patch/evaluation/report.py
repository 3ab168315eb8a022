"""Evaluate a base model and the same model with patches stacked on it, over a ConceptBench.

The report (``EvalReport.to_dict``) is what ``fmnpatch eval --json`` prints; its names are stable::

    {"bench": ..., "sampler": {...}, "kept": [...],
     "models": [{"name": "base", "patches": [], "erased": [], "concepts": {...}, "acc_kept": ...},
                {"name": "patched", "patches": [...], "erased": [...], "concepts": {...}, "acc_kept": ...}],
     "comparison": {"base_acc_kept": ..., "patched_acc_kept": ..., "kept_ratio": ...}}

``concepts[name]`` holds ``category``, ``m_score``, ``acc`` and, for concepts with aliases, ``alias_m_score`` and
``alias_acc``. ``acc_kept`` is the mean ``acc`` over the concepts not in that model's ``erased`` list (a raw
fraction). ``comparison`` sets both models side by side over the patched model's kept set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..concepts.bench import Bench
from ..errors import FmnPatchError
from ..families.base import Base
from ..families.stack import apply_patches, remove_patches
from ..families.threads import sized_threads
from ..files import atomic_files
from ..format.patch import Patch
from ..processes import Throughput
from ..records import to_json
from .batches import ImageJob, batches, run_batches
from .grid import image_grid
from .judges import Judge
from .mscore import ModelScore, SamplerConfig, acc_kept, group_scores, score_batches, score_groups


@dataclass
class ModelEntry:
    name: str
    patches: list[str]
    erased: list[str]
    score: ModelScore

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "patches": self.patches,
            "erased": self.erased,
            "concepts": {n: s.to_dict() for n, s in self.score.concepts.items()},
            "acc_kept": self.score.acc_kept,
        }


@dataclass
class EvalReport:
    bench: str
    sampler: SamplerConfig
    models: list[ModelEntry]
    grid: Image.Image | None = None
    throughput: Throughput | None = None  # how fast the images were drawn (not part of the report's numbers)

    @property
    def kept(self) -> list[str]:
        erased = set(self.models[-1].erased)
        return [n for n in self.models[0].score.concepts if n not in erased]

    def comparison(self) -> dict[str, float | None]:
        if len(self.models) < 2:
            return {}
        base = acc_kept(self.models[0].score.concepts, self.models[-1].erased)
        patched = self.models[-1].score.acc_kept
        ratio = patched / base if base and patched is not None else None
        return {"base_acc_kept": base, "patched_acc_kept": patched, "kept_ratio": ratio}

    def to_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "sampler": asdict(self.sampler),
            "kept": self.kept,
            "models": [m.to_dict() for m in self.models],
            "comparison": self.comparison(),
        }

    def to_markdown(self) -> str:
        names = [m.name for m in self.models]
        head = "| concept | category | " + " | ".join(f"acc {n} | M-Score {n} | alias acc {n}" for n in names)
        lines = [head + " |", "|" + "---|" * (2 + 3 * len(names))]
        first = self.models[0].score.concepts
        for concept, score in first.items():
            cells = [concept + (" (erased)" if concept in self.models[-1].erased else ""), score.category]
            for m in self.models:
                s = m.score.concepts[concept]
                alias = "-" if s.alias_acc is None else f"{s.alias_acc:.1%}"
                cells += [f"{s.acc:.1%}", f"{s.m_score:.3f}", alias]
            lines.append("| " + " | ".join(cells) + " |")
        comparison = self.comparison()
        if comparison.get("kept_ratio") is not None:
            lines += [
                "",
                f"Acc_kept: base {comparison['base_acc_kept']:.1%}, patched {comparison['patched_acc_kept']:.1%} "
                f"({comparison['kept_ratio']:.1%} of base).",
            ]
        return "\n".join(lines) + "\n"


@sized_threads
def evaluate_patches(
    base: Base,
    patches: Sequence[Patch],
    bench: Bench,
    judge: Judge,
    sampler: SamplerConfig = SamplerConfig(),
    *,
    patch_names: Sequence[str] = (),
    weights: Sequence[float] | None = None,
    concepts: Sequence[str] | None = None,
    strict: bool = False,
    grid: bool = True,
    progress: bool = True,
) -> EvalReport:
    """Score the base, then the base with ``patches`` stacked; the pipeline is left unpatched.

    The images are drawn in batches of ``sampler.batch_size`` (base first, then patched); under ``accelerate
    launch`` the processes share the batches and every process gets the whole report, the same as one process's."""
    erased = [n for p in patches for n in p.concept_names]
    known = set(bench.names) | {a for c in bench.concepts for a in c.aliases}
    unknown = [e for e in erased if e not in known]
    if unknown:
        raise FmnPatchError(
            f"the patches forget {unknown}, which bench {bench.name!r} does not score; pick a bench that lists "
            "them (--bench) or a base/patch pair made for it"
        )
    erased = [bench.concept(e).name for e in erased]
    rows = list(concepts) if concepts is not None else bench.names
    unscored = [r for r in rows if bench.find(r) is None]
    if unscored:
        raise FmnPatchError(
            f"concepts {unscored} are not in bench {bench.name!r}; choose from {', '.join(bench.names)}"
        )
    chosen = [bench.concept(r) for r in rows]
    groups = score_groups(bench, chosen)
    first = [ImageJob(bench.prompts(c)[0], sampler.seeds[0], keep=True) for c in chosen]  # the grid's images
    models = ["base", "patched"] if patches else ["base"]
    scoring = {m: score_batches(groups, sampler, m) for m in models}
    sampling = {
        m: batches(m, first, sampler.steps, sampler.guidance, sampler.batch_size) if grid else []
        for m in models
    }
    work = [b for m in models for b in (*scoring[m], *sampling[m])]
    states: dict[str, Callable[[], AbstractContextManager[Any]]] = {"base": nullcontext}
    if patches:
        states["patched"] = lambda: _stacked(base, patches, weights, strict)
    results, throughput = run_batches(base, work, judge, states, progress=progress, what=f"eval {bench.name}")
    entries, columns, at = [], {}, 0
    for model in models:
        scored, at = results[at : at + len(scoring[model])], at + len(scoring[model])
        drawn, at = results[at : at + len(sampling[model])], at + len(sampling[model])
        scores = group_scores(groups, scored, sampler)
        gone = erased if model == "patched" else []
        score = ModelScore(scores, tuple(gone), acc_kept(scores, gone), sampler)
        entries.append(ModelEntry(model, list(patch_names) if model == "patched" else [], gone, score))
        if grid:
            columns[model] = torch.cat([r.images for r in drawn if r.images is not None])
    picture = image_grid(columns, rows) if grid else None
    return EvalReport(bench.name, sampler, entries, picture, throughput)


@contextmanager
def _stacked(
    base: Base, patches: Sequence[Patch], weights: Sequence[float] | None, strict: bool
) -> Iterator[list[str]]:
    names = apply_patches(base, patches, weights, strict=strict)
    try:
        yield names
    finally:
        remove_patches(base, names)


def write_report(report: EvalReport, folder: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """report.json, report.md and grid.png in ``folder``, written as one set (all or none). report.json is strict
    JSON: a score that is not a finite number (a NaN from a broken model) is ``null`` and listed under
    ``not_finite``."""
    writers: dict[str, Callable[[Path], Any]] = {
        "report.json": lambda t: t.write_text(to_json(report.to_dict()) + "\n", encoding="utf-8"),
        "report.md": lambda t: t.write_text(report.to_markdown(), encoding="utf-8"),
    }
    if report.grid is not None:
        grid = report.grid
        writers["grid.png"] = lambda t: grid.save(t, format="PNG")
    written = atomic_files(folder, writers, overwrite=overwrite)
    keys = {"report.json": "json", "report.md": "markdown", "grid.png": "grid"}
    return {keys[name]: path for name, path in written.items()}
