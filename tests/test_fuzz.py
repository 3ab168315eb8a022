"""Mutation fuzzing of patch files: 5,000+ damaged or hostile files through ``Patch.load``, inspect and apply.

Every mutation starts from a valid patch file and is drawn from a seeded generator (the same cases every run):
byte flips anywhere, truncations, changes to every field of the header JSON (tensor entries, dtypes, shapes and
offsets of every JSON type, ``__metadata__`` of every type, each ``fmn_patch.*`` field in every wrong shape,
deep nesting, huge numbers), dtype and shape changes that keep the byte count (so safetensors accepts them), and
metadata full of hostile strings (terminal escapes, ``\\r``, bidi controls, NUL, megabyte titles). The only outcomes
allowed: the file loads whole, or ``PatchFileError``. A file that loads is inspected (the text must reach the
terminal with no control character but newlines) and applied to a real tiny pipeline (a clean apply, or an
``FmnPatchError`` such as a base mismatch); the base must come back bit for bit.
"""

from __future__ import annotations

import json
import random
import struct
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import random_patch

from fmn_patch.errors import FmnPatchError, PatchFileError
from fmn_patch.families.base import load_base
from fmn_patch.families.stack import apply_patches, remove_patches
from fmn_patch.format import Patch
from fmn_patch.format.summary import render_text, summarize

HOSTILE = [
    "\x1b]0;pwned\x07",  # OSC: retitles the terminal
    "\x1b[2J\x1b[H",  # clears the screen
    "ok\rEVIL",  # overwrites the line
    "\u202egnp.exe",  # right-to-left override
    "nul\x00byte",
    "\u2028line\u2029sep",
    "\x9b31m",  # C1 CSI
    "tab\tand\nnewline",
    'cat") ; import os; os.system("echo pwned") #',
    "| a | b |\n| - | - |",
    "<script>alert(1)</script>",
    "```\n# fence",
    "x" * 1_000_000,  # a megabyte title
    "é" * 300,
    "",
    " ",
]
JSON_VALUES: list[object] = [
    None,
    True,
    0,
    -1,
    2**70,
    1.5,
    "text",
    "²",
    "",
    [],
    [1, 2],
    ["a"],
    {},
    {"name": 1},
    {"a": "b"},
    [{"name": "x"}],
    [{"name": "x", "category": "colour"}],
    [{"name": 5, "category": "object"}],
    [{"category": "object"}],
    ["circle"],
    [[[]]],
]
RAW_JSON = ["1e400", "-1e400", "NaN", "Infinity", "[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000]
RAW_JSON += ["9" * 5000]  # an integer longer than Python converts
DTYPES = ["F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "I8", "Q4", "", None, 3]
HASHES = ("modelspec.hash_sha256", "fmn_patch.tensor_hash")  # every hash a header may carry
# dtype changes that keep the byte count: (dtype, element size)
SIZED = [
    ("F32", 4),
    ("I32", 4),
    ("U32", 4),
    ("F16", 2),
    ("BF16", 2),
    ("I16", 2),
    ("F64", 8),
    ("I64", 8),
    ("U8", 1),
]


def _split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: object, body: bytes, raw: str | None = None) -> bytes:
    text = (raw if raw is not None else json.dumps(header)).encode("utf-8", "surrogatepass")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _header_raw(header: dict, path: list[str], raw: str) -> str:
    """The header JSON with the value at ``path`` replaced by the raw JSON text ``raw``."""
    marker = "__FUZZ_MARKER__"
    node = header
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = marker
    return json.dumps(header).replace(json.dumps(marker), raw, 1)


class Mutator:
    def __init__(self, valid: bytes, seed: int = 0) -> None:
        self.valid = valid
        self.header, self.body = _split(valid)
        self.rng = random.Random(seed)

    def fresh(self) -> dict:
        return json.loads(json.dumps(self.header))

    # --------------------------------------------------------------------------------------------- classes
    def byte_flips(self) -> bytes:
        data = bytearray(self.valid)
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(len(data))
            data[i] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def truncation(self) -> bytes:
        cut = self.rng.choice([self.rng.randrange(len(self.valid)), self.rng.randrange(16)])
        return self.valid[:cut]

    def tensor_field(self) -> bytes:
        header = self.fresh()
        key = self.rng.choice([k for k in header if k != "__metadata__"])
        entry_field = self.rng.choice(["dtype", "shape", "data_offsets", "whole", "extra"])
        if entry_field == "whole":
            header[key] = self.rng.choice(JSON_VALUES)
        elif entry_field == "extra":
            header[key]["extra"] = self.rng.choice(JSON_VALUES)
        elif entry_field == "dtype":
            header[key]["dtype"] = self.rng.choice(DTYPES)
        elif self.rng.random() < 0.3:
            return _join(None, self.body, _header_raw(header, [key, entry_field], self.rng.choice(RAW_JSON)))
        else:
            value = self.rng.choice(
                [*JSON_VALUES, [0], [0, 1, 2], [-4, 0], [0, 2**64], ["0", "8"], [8, 0], [0, 0], [0, 10**9]]
            )
            header[key][entry_field] = value
        return _join(header, self.body)

    def metadata_field(self) -> bytes:
        header = self.fresh()
        meta = header["__metadata__"]
        kind = self.rng.random()
        if kind < 0.1:
            header["__metadata__"] = self.rng.choice(JSON_VALUES)
            return _join(header, self.body)
        key = self.rng.choice(sorted(meta))
        if kind < 0.3:  # a value that is not a string (safetensors refuses)
            meta[key] = self.rng.choice(JSON_VALUES)
            return _join(header, self.body)
        if kind < 0.4:
            return _join(
                None, self.body, _header_raw(header, ["__metadata__", key], self.rng.choice(RAW_JSON))
            )
        if kind < 0.5:
            del meta[key]
            return _join(header, self.body)
        # a string that holds JSON of the wrong shape, or none at all (every fmn_patch.* field is JSON or digits)
        value = self.rng.choice([*JSON_VALUES, *RAW_JSON[:4]])
        meta[key] = value if isinstance(value, str) and kind < 0.7 else json.dumps(value)
        if self.rng.random() < 0.2:
            meta[key] = self.rng.choice(RAW_JSON)
        return _join(header, self.body)

    def dtype_shape(self) -> bytes:
        """A tensor's dtype and shape changed together so that safetensors' size check still passes."""
        header = self.fresh()
        key = self.rng.choice([k for k in header if k != "__metadata__"])
        entry = header[key]
        start, end = entry["data_offsets"]
        nbytes = end - start
        dtype, size = self.rng.choice(SIZED)
        if nbytes % size:
            dtype, size = "U8", 1
        count = nbytes // size
        shapes = [[count], [1, count], [count, 1]]
        shapes += [[d, count // d] for d in (2, 4, 8) if count % d == 0]
        shapes += [[1, 1, count]]
        entry["dtype"], entry["shape"] = dtype, self.rng.choice(shapes)
        if self.rng.random() < 0.3:  # and the hashes dropped, so tensor content alone decides
            for key in HASHES:
                header["__metadata__"].pop(key, None)
        return _join(header, self.body)

    def data_without_hash(self) -> bytes:
        """Tensor bytes changed in a file whose hash was removed: loads unverified unless the values are bad."""
        header = self.fresh()
        for key in HASHES:
            header["__metadata__"].pop(key, None)
        body = bytearray(self.body)
        for _ in range(self.rng.randint(1, 4)):
            i = self.rng.randrange(len(body))
            body[i] = self.rng.choice([0x00, 0xFF, 0x7F, 0x80, self.rng.randrange(256)])
        return _join(header, bytes(body))

    def hostile_metadata(self) -> bytes:
        header = self.fresh()
        meta = header["__metadata__"]
        text = self.rng.choice(HOSTILE)
        where = self.rng.choice(
            ["title", "description", "concept", "base", "config", "results", "parents", "new"]
        )
        if where == "title":
            meta["modelspec.title"] = text
        elif where == "description":
            meta["modelspec.description"] = text
        elif where == "concept":
            meta["fmn_patch.concepts"] = json.dumps([{"name": text, "category": "object"}])
        elif where == "base":
            meta["fmn_patch.base_model"] = text
        elif where == "config":
            meta["fmn_patch.config"] = json.dumps({text[:1000]: text})
        elif where == "results":
            meta["fmn_patch.results"] = json.dumps({"concepts": {text[:1000]: {"acc": text}}})
        elif where == "parents":
            meta["fmn_patch.parents"] = json.dumps([{"title": text, "weight": 1.0}])
        else:
            meta[text[:1000] or "empty"] = text
        return _join(header, self.body)

    def plan(self, n: int) -> list[tuple[str, Callable[[], bytes]]]:
        weights = {
            "byte_flips": 1200,
            "truncation": 400,
            "tensor_field": 1000,
            "metadata_field": 1200,
            "dtype_shape": 500,
            "data_without_hash": 150,
            "hostile_metadata": 900,
        }
        scale = n / sum(weights.values())
        return [(name, getattr(self, name)) for name, k in weights.items() for _ in range(round(k * scale))]


def _apply_all(base, waiting: dict[tuple, Patch], applied: dict[tuple, str]) -> list[str]:
    """Apply the waiting patches stacked (a clean apply or an ``FmnPatchError``); when the stack is refused, each
    one alone, so that every patch's own outcome is known. Returns the failures."""
    try:
        remove_patches(base, apply_patches(base, list(waiting.values())))
        applied.update(dict.fromkeys(waiting, "applied"))
        return []
    except FmnPatchError:
        pass
    except BaseException as e:
        return [f"apply of a stack: {type(e).__name__}: {str(e)[:200]}"]
    failures = []
    for key, patch in waiting.items():
        try:
            remove_patches(base, apply_patches(base, [patch]))
            applied[key] = "applied"
        except FmnPatchError as e:
            applied[key] = type(e).__name__
        except BaseException as e:
            failures.append(f"apply: {type(e).__name__}: {str(e)[:200]}")
    return failures


def _terminal_safe(text: str) -> bool:
    return all(ch == "\n" or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def test_mutated_patch_files_load_whole_or_are_refused(pipeline_dirs, tmp_path):
    # CPU seconds of this process: on a shared machine the wall time also counts other people's jobs (37 s wall
    # at load 7, 83 s at load 9 on 2 cores, for about 30 CPU seconds)
    start = time.process_time()
    base = load_base(str(pipeline_dirs["sd1"]))
    full = random_patch(base, rank=2, seed=11, concept="circle")
    keep = full.modules[:2]  # a two-module patch: small files, the same code paths
    patch = Patch({m: full.factors[m] for m in keep}, full.info)
    valid = patch.save(tmp_path / "valid.safetensors").read_bytes()
    weights_before = {n: w.weight.detach().clone() for n, w in base.family.adapters.targets().items()}

    cases = Mutator(valid, seed=2024).plan(5200)
    assert len(cases) >= 5000
    outcomes: dict[str, dict[str, int]] = {}
    failures: list[str] = []
    # apply's outcome depends on the tensors, the component and whether the base hash matches (a warning) only
    applied: dict[tuple, str] = {}
    base_hash = base.family.identity.target_hash()
    waiting: dict[tuple, Patch] = {}  # loaded, not applied yet: applied ten at a time, stacked
    path = tmp_path / "case.safetensors"
    for i, (name, make) in enumerate(cases):
        data = make()
        path.write_bytes(data)
        tally = outcomes.setdefault(name, {"loaded": 0, "refused": 0})
        try:
            loaded = Patch.load(path)
        except PatchFileError as e:
            tally["refused"] += 1
            if len(str(e)) > 2000 or "\n" in str(e):
                failures.append(f"{i} {name}: refusal is not one short line: {str(e)[:200]!r}")
            continue
        except BaseException as e:  # any other outcome is the bug this test looks for
            failures.append(f"{i} {name}: {type(e).__name__}: {str(e)[:200]}")
            continue
        tally["loaded"] += 1
        try:
            summary = summarize(loaded, path)
            json.dumps(summary, default=str)
            if not _terminal_safe(render_text(summary)):
                failures.append(f"{i} {name}: inspect prints a control character")
            key = (summary["tensor_hash"], loaded.component, loaded.info.base_hash in (None, base_hash))
            if key not in applied and key not in waiting:
                waiting[key] = loaded
        except BaseException as e:
            failures.append(f"{i} {name}: after load: {type(e).__name__}: {str(e)[:200]}")
        if len(waiting) >= 10 or (i == len(cases) - 1 and waiting):
            failures += _apply_all(base, waiting, applied)
            waiting.clear()
    seconds = time.process_time() - start

    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:20])
    for name, tally in outcomes.items():  # every class was exercised, and none is all one outcome by accident
        assert tally["loaded"] + tally["refused"] > 0, name
    assert outcomes["truncation"]["loaded"] == 0 and outcomes["byte_flips"]["refused"] > 0
    assert outcomes["hostile_metadata"]["loaded"] > 0 and outcomes["dtype_shape"]["loaded"] > 0
    assert "applied" in applied.values() and len(applied) >= 5
    for n, w in base.family.adapters.targets().items():
        assert torch.equal(w.weight, weights_before[n]), f"{n} changed"
    assert seconds < 60, f"the fuzz took {seconds:.1f} CPU seconds"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ('{"__metadata__": ["a"]}', "not a safetensors file"),
        ('{"t": "hello"}', "not a safetensors file"),
        ('{"t": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}', "not a safetensors file"),
        ('{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}', "not a safetensors file"),
        ('{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e400]}}', "not a safetensors file"),
        ('{"a": ' + "[" * 500 + "]" * 500 + "}", "not a safetensors file"),
    ],
)
def test_structural_cases_from_the_report(tmp_path, raw, match):
    """The header shapes that crashed inspect/apply/merge/export/push/search before: each one clean refusal."""
    path = tmp_path / "p.safetensors"
    path.write_bytes(_join(None, b"\0" * 4, raw))
    with pytest.raises(PatchFileError, match=match):
        Patch.load(path)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("fmn_patch.format_version", "²", "format version '²' is unknown"),
        ("fmn_patch.concepts", '"circle"', "concepts must be a JSON list"),
        ("fmn_patch.concepts", '{"name": "x"}', "concepts must be a JSON list"),
        ("fmn_patch.concepts", '[{"category": "object"}]', "objects with a text name"),
        ("fmn_patch.concepts", '[{"name": 3}]', "objects with a text name"),
        ("fmn_patch.concepts", '["circle"]', "objects with a text name"),
        ("fmn_patch.parents", '{"a": 1}', "parents must be a JSON list"),
        ("fmn_patch.parents", '["a"]', "parents has entries of the wrong type"),
        ("fmn_patch.config", "[1, 2]", "config must be a JSON object"),
        ("fmn_patch.results", '"good"', "results must be a JSON object"),
        ("fmn_patch.extra", "[" * 100 + "]" * 100, "must be a JSON object"),
        ("fmn_patch.config", '{"a": ' * 40 + "1" + "}" * 40, "nests deeper than 32"),
        ("fmn_patch.rank", "²", "rank must be a whole number"),
        ("fmn_patch.config", "9" * 5000, "not valid JSON"),
    ],
)
def test_header_fields_of_the_wrong_shape_are_refused(sd1, tmp_path, field, value, match):
    good = random_patch(sd1).save(tmp_path / "good.safetensors").read_bytes()
    header, body = _split(good)
    header["__metadata__"][field] = value
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_join(header, body))
    with pytest.raises(PatchFileError, match=match):
        Patch.load(path)


def test_non_finite_factors_are_refused(sd1, tmp_path):
    patch = random_patch(sd1)
    module = patch.modules[0]
    a, b = patch.factors[module]
    for bad in (float("nan"), float("inf")):
        a2 = a.clone()
        a2[0, 0] = bad
        with pytest.raises(FmnPatchError, match="NaN or infinite"):
            Patch({**patch.factors, module: (a2, b)}, patch.info)
    # and in a file (no way around it through the header: the check is on the tensors)
    tensors = patch.state_dict()
    tensors[f"unet.{module}.lora_B.weight"] = torch.full_like(b, float("nan"))
    import safetensors.torch

    path = tmp_path / "nan.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"fmn_patch.format_version": "1"})
    with pytest.raises(PatchFileError, match="NaN or infinite"):
        Patch.load(path)


def test_only_float_factor_dtypes_load(sd1, tmp_path):
    patch = random_patch(sd1)
    for dtype in (torch.float64, torch.int32, torch.float8_e4m3fn):
        tensors = {k: v.to(dtype) for k, v in patch.state_dict().items()}
        import safetensors.torch

        path = tmp_path / f"{str(dtype).split('.')[-1]}.safetensors"
        safetensors.torch.save_file(tensors, str(path), metadata={"fmn_patch.format_version": "1"})
        with pytest.raises(PatchFileError, match="must be float32, float16 or bfloat16"):
            Patch.load(path)
    for dtype in (torch.float16, torch.bfloat16):
        half = Patch({m: (a.to(dtype), b.to(dtype)) for m, (a, b) in patch.factors.items()}, patch.info)
        assert (
            Patch.load(half.save(tmp_path / f"{dtype}.safetensors")).factors[patch.modules[0]][0].dtype
            == dtype
        )


def test_a_file_path_that_is_a_folder_or_unreadable(tmp_path):
    with pytest.raises(PatchFileError, match="a folder"):
        Patch.load(tmp_path)
    Path(tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(PatchFileError, match="too short"):
        Patch.load(tmp_path / "x.safetensors")
