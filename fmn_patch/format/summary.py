"""What is in a patch, for people (``fmnpatch inspect``) and scripts (``--json``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..text import printable
from .patch import Patch
from .targets import kind_for

#: Which tools read a patch file of each form (the native form does nothing in ComfyUI or AUTOMATIC1111).
USE_WITH = {
    "native": "diffusers (pipe.load_lora_weights) and fmnpatch; for ComfyUI or AUTOMATIC1111 export it with "
    "`fmnpatch export FILE -o FILE.kohya.safetensors`",
    "kohya": "ComfyUI (models/loras), AUTOMATIC1111 (models/Lora) and kohya sd-scripts; diffusers and fmnpatch read "
    "it too",
}


def summarize(patch: Patch, path: str | Path | None = None, use_with: str | None = None) -> dict[str, Any]:
    """A JSON-ready description: header fields, concepts, base, rank, size and per-module delta norms.
    ``use_with`` says which tools read the file (``families.export.use_with`` knows the family's; by default
    the generic line of its form)."""
    info = patch.info
    header = patch.header()
    size = Path(path).stat().st_size if path is not None else None
    return {
        "path": str(path) if path is not None else None,
        "title": header["modelspec.title"],
        "description": header["modelspec.description"],
        "method": info.method,
        "concepts": [dataclasses.asdict(c) for c in info.concepts],
        "base": {
            "model": info.base_model,
            "revision": info.base_revision,
            "hash": info.base_hash,
            "encoder_hash": info.encoder_hash,  # of its text encoders' layers; only with encoder factors
            "architecture": info.architecture,
        },
        "component": patch.component,
        "targets": kind_for(patch.component, patch.modules).description,
        "rank": patch.rank,
        "ranks": patch.rank_summary(),  # min, median, max over modules (they differ at rank "auto")
        "modules": len(patch.factors),
        # the text encoders' layers the patch changes beside its key/value projections ({} by default)
        "encoders": {
            c: {"modules": len(r), "rank": max(r.values()), "targets": kind_for(c, list(r)).description}
            for c, r in patch.encoder_ranks().items()
        },
        "parameters": patch.num_parameters(),
        "size_bytes": size,
        "tensor_hash": patch.tensor_hash(),
        "verified": patch.verified,  # the header's hash was checked against the tensors on load
        "form": patch.form,  # native (diffusers/PEFT keys) or kohya (the UIs' keys)
        "use_with": use_with or USE_WITH[patch.form],
        "date": info.date,
        "format_version": info.format_version,
        "config": info.config,
        "parents": list(info.parents),
        "results": info.results,
        "extra": info.extra,
        "versions": info.versions,
        "norms": patch.norms(),
    }


def render_text(summary: dict[str, Any]) -> str:
    """The summary as aligned text lines. Every string from the file is escaped for the terminal (control and
    format characters shown as ``\\x1b``, ``\\u202e``) and long ones are cut."""
    show = printable
    concepts = ", ".join(f"{show(c['name'])} ({c['category']})" for c in summary["concepts"]) or "-"
    base = summary["base"]
    size = summary["size_bytes"]
    integrity = "verified" if summary["verified"] else "NOT VERIFIED: the header carries no hash"
    ranks = summary["ranks"]
    rank = (
        f"{ranks['min']} to {ranks['max']} (median {ranks['median']:g})"
        if ranks["min"] != ranks["max"]
        else str(summary["rank"])
    )
    lines = [
        f"title        {show(summary['title'])}",
        f"method       {show(summary['method'])}",
        f"concepts     {show(concepts, 2000)}",
        f"base         {show(base['model'] or '-')}  [{show(base['architecture'])}]"
        + (f"  revision {show(base['revision'])}" if base["revision"] else ""),
        f"base hash    {show(base['hash'] or '-')}",
        f"rank         {rank}  ({summary['modules']} modules, {summary['parameters']:,} parameters"
        + (f", {size / 1024:.1f} KiB" if size is not None else "")
        + ")",
        *(
            f"+ {c:<10} rank {e['rank']} on {e['modules']} modules ({e['targets']})"
            for c, e in summary["encoders"].items()
        ),
        f"tensor hash  {summary['tensor_hash']}  ({integrity})",
        f"date         {show(summary['date'] or '-')}",
        f"use with     {summary['use_with']}",
    ]
    if summary["parents"]:
        parents = "; ".join(f"{p.get('title', '?')} x{p.get('weight', '?')}" for p in summary["parents"])
        lines.append("parents      " + show(parents, 2000))
    for key in ("config", "results"):
        if summary[key]:
            text = ", ".join(f"{k}={v}" for k, v in sorted(summary[key].items()))
            lines.append(f"{key:<12} " + show(text, 2000))
    lines.append("delta norms (Frobenius):")
    width = max(len(m) for m in summary["norms"])
    lines += [f"  {m:<{width}}  {n:.4g}" for m, n in summary["norms"].items()]
    return "\n".join(lines)
