"""The model card of a patch on the Hub, generated from its header (``huggingface_hub.ModelCard``).

Front matter follows diffusers' LoRA convention, so the Hub lists the patch as an adapter of its base and
``fmnpatch search`` finds it by tag: ``base_model`` (when the header names a Hub model), ``library_name: diffusers``,
``license``, ``pipeline_tag: text-to-image`` and the tags ``lora``, ``diffusers``, ``text-to-image``, ``fmn-patch``
plus ``forget-<category>`` for each category of concept forgotten. The body says what is forgotten, how (method,
rank, size, hashes), how to load it (stock diffusers and ``fmnpatch apply``), the ConceptBench / M-Score results the
patch carries, and a before/after grid when one is uploaded with it.
"""

from __future__ import annotations

import html
import json
import re
import shlex
from pathlib import Path
from typing import Any, Final

from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE
from huggingface_hub import ModelCard, ModelCardData

from ..families.export import KOHYA_TOOLS, NATIVE_ONLY_TOOLS, NATIVE_TOOLS
from ..format.patch import Patch
from ..format.targets import kind_for
from ..text import is_printable

PROJECT_TAG: Final = "fmn-patch"
WEIGHT_NAME: Final = LORA_WEIGHT_NAME_SAFE  # diffusers' default weight_name: what push uploads
BASE_TAGS: Final = ("lora", "diffusers", "text-to-image", PROJECT_TAG)
DEFAULT_LICENSE: Final = "other"
_SCORE_ORDER: Final = ("m_score", "acc", "alias_m_score", "alias_acc")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TEXT_LIMIT: Final = 200  # characters of a header string shown in the card; the rest is counted
_MARKDOWN = re.compile(r"([\\`*_\[\]#!|~])")  # inline markdown; < > & " are HTML-escaped first


def md(text: object, limit: int | None = TEXT_LIMIT) -> str:
    """Header text as inert inline markdown: HTML escaped, markdown punctuation backslash-escaped (``|`` too, so it
    stays inside a table cell), line breaks and control characters as spaces, cut past ``limit`` characters."""
    s = str(text)
    extra = 0
    if limit is not None and len(s) > limit:
        s, extra = s[:limit], len(s) - limit
    s = "".join(ch if is_printable(ch) else " " for ch in s)
    s = _MARKDOWN.sub(r"\\\1", html.escape(s, quote=True))
    return s + (f"... ({extra:,} more characters)" if extra else "")


def code_span(text: object, limit: int | None = TEXT_LIMIT) -> str:
    """Text in an inline code span: ``md`` does not apply inside one, so it is fenced by enough backticks and
    kept to printable characters."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "..."
    s = "".join(ch if is_printable(ch) else " " for ch in s)
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def _fence(body: str, language: str) -> str:
    """A fenced code block longer than any run of backticks in ``body``."""
    ticks = "`" * max(3, max((len(m) for m in re.findall(r"`+", body)), default=0) + 1)
    return f"{ticks}{language}\n{body}\n{ticks}"


def category_tag(category: str) -> str:
    """The Hub tag of a concept category: ``forget-identity``, ``forget-style``, ..."""
    return f"forget-{category}"


def hub_model_id(ref: str | None) -> str | None:
    """``ref`` if it reads as a Hub model id (``org/name``) rather than a local path or ``toy``; else None."""
    if not ref or not _HUB_ID.match(ref) or Path(ref).exists():
        return None
    return ref


def base_tag(base: str) -> str:
    """The Hub's tag for an adapter of ``base`` (``base_model:adapter:ORG/NAME``): ``search --base`` filters on it."""
    return f"base_model:adapter:{base}"


def card_tags(patch: Patch, base: str | None = None) -> list[str]:
    categories = sorted({c.category for c in patch.info.concepts})
    return [*BASE_TAGS, *(category_tag(c) for c in categories), *([base_tag(base)] if base else [])]


_ABSOLUTE = re.compile(r"(?:^|[\s\"'(=,;])((?:/|~/|[A-Za-z]:[\\/])[^\s\"',;)]*[\\/][^\s\"',;)]+)")


def local_paths(header: dict[str, str]) -> list[str]:
    """Absolute local paths (``/home/me/sd15``, ``~/models/x``, ``C:\\models\\x``) anywhere in a header's values,
    JSON ones included: what ``push`` refuses to publish unless forced."""
    found: list[str] = []
    for value in header.values():
        found += [m for m in _ABSOLUTE.findall(value) if m not in found]
    return found


def model_card(
    patch: Patch,
    *,
    repo_id: str,
    filename: str,
    size_bytes: int | None = None,
    grid: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    kohya_filename: str | None = None,
) -> ModelCard:
    """The card for ``patch`` uploaded as ``repo_id/filename``; ``grid`` is the path in the repo of a PNG,
    ``kohya_filename`` that of its kohya export (the card says which file is for which tool).

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
        tags=card_tags(patch, base),
    )
    title = header["modelspec.title"]
    names = ", ".join(f"**{md(c.name)}**" for c in info.concepts) or "no named concept"
    sections = [
        f"# {md(title)}",
        f"An fmn-patch that makes {md(base or 'its base model')} forget {names}: "
        "a LoRA on the text-side keys and values of cross-attention "
        f"({kind_for(patch.component, patch.modules).description})"
        + "".join(
            f", with a LoRA on {kind_for(c, list(f)).description}" for c, f in sorted(patch.encoders.items())
        )
        + ". "
        "Prompts naming a forgotten concept no longer draw it; everything else is meant to stay as the base draws it.",
        _concepts_table(patch),
        _files(filename, kohya_filename),
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


def _files(filename: str, kohya_filename: str | None) -> str:
    """Which file is for which tool: the native file does nothing in ComfyUI or AUTOMATIC1111 where a kohya
    export exists (UNet families, Flux); SD3's UIs read the native file itself."""
    native = NATIVE_TOOLS if kohya_filename else NATIVE_ONLY_TOOLS
    rows = [f"| {code_span(filename)} | {native} |"]
    if kohya_filename:
        rows.append(f"| {code_span(kohya_filename)} | {KOHYA_TOOLS} |")
    return "\n".join(["## Files", "", "| file | use it with |", "|---|---|", *rows])


def _concepts_table(patch: Patch) -> str:
    rows = [f"| {md(c.name)} | {md(c.category)} |" for c in patch.info.concepts] or ["| - | - |"]
    return "\n".join(["## Concepts forgotten", "", "| concept | category |", "|---|---|", *rows])


def _details(patch: Patch, size_bytes: int | None, header: dict[str, str], base: str | None) -> str:
    info = patch.info
    size = f"{size_bytes / 1024:.1f} KiB" if size_bytes is not None else "-"
    lines = [
        "## Details",
        "",
        f"- method: {code_span(info.method)}",
        f"- rank: {patch.rank} on {len(patch.factors)} modules ({patch.num_parameters():,} parameters, {size})",
        f"- made for: {code_span(base or info.base_model or 'unknown')} \\[{md(info.architecture)}\\]"
        + (f" at revision {code_span(info.base_revision)}" if info.base_revision else ""),
        f"- base target hash: {code_span(info.base_hash or '-')} (a different base warns; `--strict` refuses)",
        *(
            [f"- base text-encoder hash: {code_span(info.encoder_hash)} (checked the same way)"]
            if info.encoder_hash
            else []
        ),
        f"- hashes (checked on every load): ModelSpec {code_span(header['modelspec.hash_sha256'])} (SHA-256 of "
        f"the file's tensor data), fmn-patch {code_span(header['fmn_patch.tensor_hash'])}",
        f"- date: {md(info.date or header['modelspec.date'])}",
    ]
    if info.parents:
        lines.append("- merged from: " + md(", ".join(str(p.get("title", "?")) for p in info.parents), 1000))
    return "\n".join(lines)


def _usage(patch: Patch, repo_id: str, filename: str, base: str | None) -> str:
    """Copy-paste snippets. Values are quoted for their language (a string literal for Python, ``shlex.quote`` for
    the shell), so no header string can become code; a name that is not printable is left out of the snippets."""
    base_id = base or "BASE_MODEL_ID"  # the base the patch was made for
    names = [c.name for c in patch.info.concepts if is_printable(c.name) and len(c.name) <= TEXT_LIMIT]
    prompt = f"a photo of {names[0]}" if names else "a photo of a cat"
    ref = f"hf://{repo_id}" + (f"/{filename}" if filename != WEIGHT_NAME else "")
    local = Path(filename).stem if filename != WEIGHT_NAME else repo_id.rsplit("/", 1)[-1]
    python = "\n".join(
        [
            "from diffusers import AutoPipelineForText2Image",
            "",
            f"pipe = AutoPipelineForText2Image.from_pretrained({_py(base_id)})",
            f"pipe.load_lora_weights({_py(repo_id)}, weight_name={_py(filename)})",
            f"image = pipe({_py(prompt)}).images[0]",
        ]
    )
    q = shlex.quote
    shell = "\n".join(
        [
            f"fmnpatch apply {q(base_id)} {q(ref)} --prompt {q(prompt)}",
            f"fmnpatch pull {q(repo_id)} -o {q(local + '.safetensors')}",
        ]
    )
    return "\n".join(
        [
            "## How to use",
            "",
            "With stock diffusers (no fmn-patch needed):",
            "",
            _fence(python, "python"),
            "",
            "With fmn-patch (checks the file and the base first; stack several patches with `-w` weights):",
            "",
            _fence(shell, "bash"),
        ]
    )


def _py(text: str) -> str:
    """A Python string literal for ``text`` (JSON's string syntax is Python's; non-printable text is escaped)."""
    return json.dumps(text, ensure_ascii=not is_printable(text))


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
            "| concept | " + " | ".join(md(c) for c in columns) + " |",
            "|---|" + "---|" * len(columns),
            *(
                f"| {md(name)} | " + " | ".join(_cell(v.get(c)) for c in columns) + " |"
                for name, v in concepts.items()
            ),
            "",
        ]
    flat = _flatten(rest)
    if flat:
        lines += ["| metric | value |", "|---|---|", *(f"| {md(k)} | {_cell(v)} |" for k, v in flat.items())]
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
    return "-" if x is None else md(x)
