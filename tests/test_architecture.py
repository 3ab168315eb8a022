"""The layout holds: layers import only downward, every file stays small, the public API carries every capability.

Read from the source with ``ast`` (no import side effects): a module may import its own layer or a lower one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import fmn_patch

ROOT = Path(fmn_patch.__file__).parent
#: Top-level modules and sub-packages by layer (ARCHITECTURE.md). ``__init__``/``__main__`` of the package are
#: the public face and sit above everything.
LAYERS: dict[str, int] = {
    "devices": 0,
    "errors": 0,
    "files": 0,
    "oserrors": 0,
    "processes": 0,
    "progress": 0,
    "records": 0,
    "startup": 0,
    "text": 0,
    "values": 0,
    "format": 1,
    "families": 2,
    "testing": 2,
    "concepts": 3,
    "methods": 4,
    "evaluation": 4,
    "attacks": 5,
    "hub": 6,
    "toy": 6,
    "cli": 7,
    "ui": 7,  # imports only the public API (the package root): test_the_page_calls_only_the_public_api
}
TOP = 8
MAX_LINES = 500


def _unit(path: Path) -> str:
    """The layer unit of a file: its sub-package, or its module name at the top."""
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def _source(node: ast.ImportFrom, path: Path) -> list[str]:
    """The dotted parts of the module ``node`` imports from, relative imports resolved against ``path``."""
    if not node.level:
        return (node.module or "").split(".")
    package = ["fmn_patch", *path.relative_to(ROOT).parent.parts]
    return [*package[: len(package) - node.level + 1], *(node.module.split(".") if node.module else [])]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported fmn_patch unit) for every import of the package in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = _source(node, path)
            if parts[0] != "fmn_patch":
                continue
            if len(parts) == 1:  # from fmn_patch import x / from . import x
                found += [(node.lineno, alias.name) for alias in node.names]
            else:
                found.append((node.lineno, parts[1]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "fmn_patch":
                    found.append((node.lineno, parts[1] if len(parts) > 1 else "__init__"))
    return found


FILES = sorted(ROOT.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {_unit(f) for f in FILES} - {"__init__", "__main__"}
    assert units <= set(LAYERS), (
        f"give these a layer in ARCHITECTURE.md and here: {sorted(units - set(LAYERS))}"
    )
    for package in ("format", "families", "concepts", "methods", "evaluation", "attacks", "hub", "cli"):
        assert (ROOT / package / "__init__.py").is_file(), package


def test_the_readme_gives_every_unit_its_layer():
    """README's "How it is built" table: one row per layer, naming in backticks each unit that LAYERS puts there."""
    import re

    text = (ROOT.parent / "README.md").read_text()
    section = text[text.index("## How it is built") :]
    rows = re.findall(r"^\| (\d) \| ([^|]+) \|", section, flags=re.M)
    shown = {
        name.rstrip("/"): int(layer) for layer, names in rows for name in re.findall(r"`([^`]+)`", names)
    }
    assert shown == LAYERS, {
        "missing": sorted(set(LAYERS) - set(shown)),
        "not a unit": sorted(set(shown) - set(LAYERS)),
        "wrong layer": sorted(n for n in set(shown) & set(LAYERS) if shown[n] != LAYERS[n]),
    }


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_import(path: Path):
    unit = _unit(path)
    own = TOP if unit in ("__init__", "__main__") else LAYERS[unit]
    if unit == "ui":
        return  # the page imports the package root, above every layer, and nothing under it
    for line, target in _imports(path):
        if target in ("__init__", "__main__"):
            assert own == TOP, f"{path.name}:{line} imports the package root, which imports every layer"
            continue
        assert target in LAYERS, f"{path.name}:{line} imports {target!r}, which has no layer"
        assert LAYERS[target] <= own, (
            f"{path.relative_to(ROOT)}:{line} ({unit}, layer {own}) imports {target} (layer {LAYERS[target]}): "
            "an upward import; move the shared part down or register it"
        )


@pytest.mark.parametrize("path", [f for f in FILES if _unit(f) == "ui"], ids=lambda p: p.name)
def test_the_page_calls_only_the_public_api(path: Path):
    """fmn_patch/ui/ sits beside the CLI and asks the library only through ``fmn_patch``'s public names."""
    for line, target in _imports(path):
        assert target == "ui" or target in fmn_patch.__all__, (
            f"{path.name}:{line} imports {target!r}, which is not in the public API (fmn_patch.__all__)"
        )


#: Every Python file of the repository: the package, its tests, the benches, the examples and the patch builder.
REPO_FILES = sorted(
    f
    for part in ("fmn_patch", "tests", "bench", "examples", "patches")
    for f in (ROOT.parent / part).rglob("*.py")
)


@pytest.mark.parametrize("path", REPO_FILES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_no_file_over_the_limit(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT.parent)} has {lines} lines; split it along its seams"


#: Pipeline attributes only ``families/`` may read: denoisers, tokenizers, text encoders, attention processors.
MODEL_PARTS = re.compile(
    r"^(unet|transformer|tokenizer(_\d+)?|text_encoder(_\d+)?|attn_processors|set_attn_processor)$"
)
#: Reads of those names that are not a pipeline's, by module: (unit-relative path, the expression read).
NOT_A_PIPELINE = {
    ("evaluation/judges.py", "self.processor.tokenizer"),  # the CLIP judge's own processor
}


def _model_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, expression) of each read of a model part: ``x.unet`` and ``getattr(x, "unet"[, default])``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and MODEL_PARTS.match(node.attr):
            if isinstance(node.ctx, ast.Load):
                found.append((node.lineno, ast.unparse(node)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and MODEL_PARTS.match(node.args[1].value)
        ):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_model_reach_check_sees_attributes_and_getattr():
    code = 'a = pipe.unet\nb = getattr(pipe, "text_encoder_2", None)\npipe.tokenizer = t\nc = base.family.text.encode\n'
    assert _model_reads(ast.parse(code)) == [(1, "pipe.unet"), (2, "getattr(pipe, 'text_encoder_2', None)")]


def test_no_module_outside_families_reaches_into_the_model():
    """Methods, attacks, evaluation and stacking reach the model only through the family's roles."""
    excused = set()
    for path in FILES:
        if _unit(path) in ("families", "toy"):  # the toy world builds and measures its own model
            continue
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        reads = _model_reads(tree)
        excused |= {(rel, expr) for _, expr in reads} & NOT_A_PIPELINE
        reads = [(line, expr) for line, expr in reads if (rel, expr) not in NOT_A_PIPELINE]
        assert not reads, f"{rel}:{reads[0][0]} reads {reads[0][1]}; ask the family's roles"
        text = path.read_text(encoding="utf-8")
        assert '== "toy"' not in text and "== TOY" not in text, f"{rel} compares to toy"
    assert excused == NOT_A_PIPELINE, f"no longer read, drop from NOT_A_PIPELINE: {NOT_A_PIPELINE - excused}"


def test_public_api_exports_every_capability():
    for name in (
        "load_base",
        "Patch",
        "train_patch",
        "edit_patch",
        "correct_patch",
        "apply_patches",
        "remove_patches",
        "fuse_patches",
        "merge_patches",
        "export_kohya",
        "evaluate_patches",
        "run_attacks",
        "push",
        "pull",
        "search",
        "TrainConfig",
        "EditConfig",
        "CorrectConfig",
        "AttackConfig",
        "SamplerConfig",
    ):
        assert name in fmn_patch.__all__ and hasattr(fmn_patch, name), name


@pytest.mark.parametrize(
    "name", ["TrainConfig", "EditConfig", "CorrectConfig", "AttackConfig", "SamplerConfig"]
)
def test_configs_are_frozen_and_validate_themselves(name):
    import dataclasses

    config = getattr(fmn_patch, name)()
    assert dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports when it runs, at the top or inside a function (``if TYPE_CHECKING``
    blocks left out: annotations only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for n in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or id(node) in typing_only:
            continue
        target = ".".join(_source(node, path))
        for alias in node.names:
            name = f"{target}.{alias.name}"
            found.add(name if name in modules else target)
    return found & modules


def test_each_package_imports_as_a_tree():
    """No import cycle between the modules of one package, function-level imports included (issue 28): a cycle
    hidden in a function is still one module that cannot be read without the other."""
    paths = {_module(p): p for p in FILES}
    edges = {m: {t for t in _runtime_imports(p, set(paths)) if t != m} for m, p in paths.items()}

    def parent(name: str) -> str:
        return name.rsplit(".", 1)[0]

    cycles = []
    for start in sorted(edges):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in edges[node]:
                if parent(nxt) != parent(start) or paths[nxt].name == "__init__.py":
                    continue  # within the package only; a package's __init__ re-exports its modules
                if nxt == start:
                    cycles.append(" -> ".join([*trail, nxt]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert not cycles, cycles[:5]


def import_graph() -> str:
    """Each package's modules and the modules of the same package each imports when it runs, one line a module
    (packages' ``__init__`` left out: they re-export), as ARCHITECTURE.md draws it."""
    paths = {_module(p): p for p in FILES if p.name != "__init__.py"}
    lines = []
    for package in sorted({m.rsplit(".", 1)[0] for m in paths}):
        lines.append(f"{package.removeprefix('fmn_patch.')}/")
        for module in sorted(m for m in paths if m.rsplit(".", 1)[0] == package):
            own = sorted(
                t.rsplit(".", 1)[1]
                for t in _runtime_imports(paths[module], set(paths))
                if t != module and t.rsplit(".", 1)[0] == package
            )
            name = module.rsplit(".", 1)[1]
            lines.append(f"  {name} -> {', '.join(own)}" if own else f"  {name}")
    return "\n".join(lines)


def test_architecture_md_draws_the_import_graph_as_it_is():
    """ARCHITECTURE.md's "Import graph" block is the graph the code has (regenerate it from the message)."""
    text = (ROOT.parent / "ARCHITECTURE.md").read_text()
    start, end = (
        "<!-- import graph: tests/test_architecture.py -->\n```\n",
        "\n```\n<!-- end of import graph -->",
    )
    assert start in text and end in text, "ARCHITECTURE.md has lost its import-graph block"
    drawn = text[text.index(start) + len(start) : text.index(end)]
    assert drawn == import_graph(), (
        "ARCHITECTURE.md's import graph is stale; the graph now:\n" + import_graph()
    )


def test_the_methods_package_names_each_of_its_modules():
    """``methods/__init__``'s docstring is its map: every module in it, in double backticks."""
    doc = ast.get_docstring(ast.parse((ROOT / "methods" / "__init__.py").read_text())) or ""
    modules = sorted(p.stem for p in (ROOT / "methods").glob("*.py") if p.stem != "__init__")
    assert [m for m in modules if f"``{m}``" not in doc] == []
