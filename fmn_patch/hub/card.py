"""The model card of a patch on the Hub, generated from its header (``huggingface_hub.ModelCard``).

Front matter follows diffusers' LoRA convention, so the Hub lists the patch as an adapter of its base and
``fmnpatch search`` finds it by tag: ``base_model`` (when the header names a Hub model), ``library_name: diffusers``,
``license``, ``pipeline_tag: text-to-image`` and the tags ``lora``, ``diffusers``, ``text-to-image``, ``fmn-patch``
plus ``forget-<category>`` for each category of concept forgotten. The body says what is forgotten, how (method,
rank, size, hashes), how to load it (stock diffusers and ``fmnpatch apply``), the ConceptBench / M-Score results the
patch carries, and a before/after grid when one is uploaded with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from huggingface_hub import ModelCard, ModelCardData

from ..format.patch import Patch
from ..format.targets import kind_for

PROJECT_TAG: Final = "fmn-patch"
WEIGHT_NAME: Final = "pytorch_lora_weights.safetensors"  # diffusers' default weight_name: what push uploads
BASE_TAGS: Final = ("lora", "diffusers", "text-to-image", PROJECT_TAG)
DEFAULT_LICENSE: Final = "other"
_SCORE_ORDER: Final = ("m_score", "acc", "alias_m_score", "alias_acc")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def category_tag(category: str) -> str:
    """The Hub tag of a concept category: ``forget-identity``, ``forget-style``, ..."""
    return f"forget-{category}"


def hub_model_id(ref: str | None) -> str | None:
    """``ref`` if it reads as a Hub model id (``org/name``) rather than a local path or ``toy``; else None."""
    if not ref or not _HUB_ID.match(ref) or Path(ref).exists():
        return None
    return ref


def card_tags(patch: Patch) -> list[str]:
    categories = sorted({c.category for c in patch.info.concepts})
    return [*BASE_TAGS, *(category_tag(c) for c in categories)]


def model_card(
    patch: Patch,
    *,
    repo_id: str,
    filename: str,
    size_bytes: int | None = None,
    grid: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
) -> ModelCard:
    """The card for ``patch`` uploaded as ``repo_id/filename``; ``grid`` is the path in the repo of a PNG.

    ``base_model`` overrides the header's base for the front matter (e.g. when the patch was made on a local copy).
    """
    info = patch.info
    header = patch.header()
    base = hub_model_id(base_model or info.base_model)
    data = ModelCardData(
        base_model=base,
        library_name="diffusers",
        license=(license or info.license or DEFAULT_LICENSE).lower(),
        pipeline_tag="text-to-image",
        tags=card_tags(patch),
    )
    title = header["modelspec.title"]
    names = ", ".join(f"**{c.name}**" for c in info.concepts) or "no named concept"
    sections = [
        f"# {title}",
        f"An fmn-patch that makes {base or 'its base model'} forget {names}: "
        "a LoRA on the text-side keys and values of cross-attention "
        f"({kind_for(patch.component, patch.modules).description}). "
        "Prompts naming a forgotten concept no longer draw it; everything else is meant to stay as the base draws it.",
        _concepts_table(patch),
        _details(patch, size_bytes, header, base),
        _usage(patch, repo_id, filename, base),
    ]
    if info.results:
        sections.append(_results(info.results))
    if grid:
        sections.append(
            "## Before / after\n\nThe base model and the patched model, same prompts and seeds:\n\n"
            f"![before / after]({grid})"
        )
    body = "\n\n".join(sections)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _concepts_table(patch: Patch) -> str:
    rows = [f"| {c.name} | {c.category} |" for c in patch.info.concepts] or ["| - | - |"]
    return "\n".join(["## Concepts forgotten", "", "| concept | category |", "|---|---|", *rows])


def _details(patch: Patch, size_bytes: int | None, header: dict[str, str], base: str | None) -> str:
    info = patch.info
    size = f"{size_bytes / 1024:.1f} KiB" if size_bytes is not None else "-"
    lines = [
        "## Details",
        "",
        f"- method: `{info.method}`",
        f"- rank: {patch.rank} on {len(patch.factors)} modules ({patch.num_parameters():,} parameters, {size})",
        f"- made for: `{base or info.base_model or 'unknown'}` [{info.architecture}]"
        + (f" at revision `{info.base_revision}`" if info.base_revision else ""),
        f"- base target hash: `{info.base_hash or '-'}` (a different base warns; `--strict` refuses)",
        f"- tensor hash: `{header['modelspec.hash_sha256']}` (checked on every load)",
        f"- date: {info.date or header['modelspec.date']}",
    ]
    if info.parents:
        lines.append("- merged from: " + ", ".join(str(p.get("title", "?")) for p in info.parents))
    return "\n".join(lines)


def _usage(patch: Patch, repo_id: str, filename: str, base: str | None) -> str:
    base_id = base or "BASE_MODEL_ID"  # the base the patch was made for
    concept = patch.info.concepts[0].name if patch.info.concepts else "a cat"
    ref = f"hf://{repo_id}" + (f"/{filename}" if filename != WEIGHT_NAME else "")
    return "\n".join(
        [
            "## How to use",
            "",
            "With stock diffusers (no fmn-patch needed):",
            "",
            "```python",
            "from diffusers import AutoPipelineForText2Image",
            "",
            f'pipe = AutoPipelineForText2Image.from_pretrained("{base_id}")',
            f'pipe.load_lora_weights("{repo_id}", weight_name="{filename}")',
            f'image = pipe("a photo of {concept}").images[0]',
            "```",
            "",
            "With fmn-patch (checks the file and the base first; stack several patches with `-w` weights):",
            "",
            "```bash",
            f'fmnpatch apply {base_id} {ref} --prompt "a photo of {concept}"',
            f"fmnpatch pull {repo_id} -o {repo_id.rsplit('/', 1)[-1]}.safetensors",
            "```",
        ]
    )


def _results(results: dict[str, Any]) -> str:
    """ConceptBench / M-Score results: a per-concept table when there is one, then every other number."""
    lines = ["## Results (ConceptBench / M-Score)", "", "Evaluation results carried in the patch header:", ""]
    concepts = results.get("concepts")
    rest = dict(results)
    if isinstance(concepts, dict) and concepts and all(isinstance(v, dict) for v in concepts.values()):
        rest.pop("concepts")
        found = {k for v in concepts.values() for k, x in v.items() if _scalar(x) and k != "category"}
        columns = [c for c in _SCORE_ORDER if c in found] + sorted(found - set(_SCORE_ORDER))
        lines += [
            "| concept | " + " | ".join(columns) + " |",
            "|---|" + "---|" * len(columns),
            *(
                f"| {name} | " + " | ".join(_cell(v.get(c)) for c in columns) + " |"
                for name, v in concepts.items()
            ),
            "",
        ]
    flat = _flatten(rest)
    if flat:
        lines += ["| metric | value |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in flat.items())]
    return "\n".join(lines).rstrip()


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif _scalar(value):
            out[name] = value
        elif isinstance(value, list) and all(_scalar(x) for x in value):
            out[name] = ", ".join(str(x) for x in value)
    return out


def _scalar(x: Any) -> bool:
    return isinstance(x, (int, float, str, bool)) or x is None


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "-" if x is None else str(x).replace("|", "\\|")
