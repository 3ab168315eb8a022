"""Hostile metadata: header strings reach the terminal and the Hub card as text, never as escapes, markup or code.

Property-based (hypothesis) over arbitrary text, plus the cases of the report: terminal escapes in titles and
concept names, ``\\r``, a concept that closes a Python string and calls ``os.system``, ``|`` and newlines in tables,
and a 10 MB title.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import unicodedata

from conftest import random_patch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import run

from fmn_patch.format import Patch, PatchConcept
from fmn_patch.hub.card import WEIGHT_NAME, md, model_card
from fmn_patch.text import is_printable, printable

UNSAFE = ("Cc", "Cf", "Zl", "Zp")
INJECTION = 'cat") ; import os; os.system("echo pwned") #'
ESCAPES = "\x1b]0;owned\x07\x1b[31mred\rback\u202eevil\x9b"
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)


def _safe(text: str, allow_newline: bool = False) -> bool:
    return all((allow_newline and ch == "\n") or unicodedata.category(ch) not in UNSAFE for ch in text)


@given(TEXT)
def test_printable_escapes_every_control_character(text):
    shown = printable(text, limit=None)
    assert _safe(shown)
    if all(unicodedata.category(ch)[0] in "LMNPS" or ch == " " for ch in text):
        assert shown == text  # letters, marks, numbers, punctuation, symbols and spaces are shown as they are


@given(st.text(min_size=201, max_size=2000))
def test_printable_cuts_long_text_and_says_how_much(text):
    shown = printable(text, limit=200)
    assert shown.endswith(f"... ({len(text) - 200:,} more characters)")


@given(TEXT)
def test_markdown_text_stays_one_inert_table_cell(text):
    cell = md(text)
    assert _safe(cell) and "\n" not in cell and "<" not in cell and ">" not in cell
    assert re.search(r"(?<!\\)[|`*_\[\]]", cell) is None  # every markup character is escaped
    row = f"| {cell} | x |"
    assert len(re.split(r"(?<!\\)\|", row)) == 4  # still two columns


def _blocks(card: str, language: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"(`{3,})" + language + r"\n(.*?)\n\1", card, re.S)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.one_of(
        TEXT.filter(lambda t: t.strip()), st.sampled_from([INJECTION, ESCAPES, "```\n# x", "a | b"])
    )
)
def test_card_snippets_quote_any_concept_name(name, sd1):
    patch = random_patch(sd1).with_info(concepts=(PatchConcept(name, "object"),), title=name)
    card = str(model_card(patch, repo_id="acme/x", filename=WEIGHT_NAME))
    (python,) = _blocks(card, "python")
    tree = ast.parse(python)  # valid Python whatever the name
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert len(calls) == 3  # from_pretrained, load_lora_weights, pipe(...): no other call
    assert not any(
        isinstance(n, (ast.Import, ast.ImportFrom)) and n.names[0].name == "os" for n in ast.walk(tree)
    )
    prompt = next(c.args[0].value for c in calls if isinstance(c.func, ast.Name) and c.func.id == "pipe")
    (shell,) = _blocks(card, "bash")
    apply_line = shlex.split(shell.splitlines()[0])
    assert apply_line[:2] == ["fmnpatch", "apply"] and apply_line[-2:] == ["--prompt", prompt]
    if is_printable(name) and len(name) <= 200:
        assert prompt == f"a photo of {name}"  # the name itself, quoted
    else:
        assert prompt == "a photo of a cat"  # an unprintable name is left out of the snippets
    body = card.split("---", 2)[2]
    outside_code = re.sub(r"(`{3,})\w*\n.*?\n\1", "", body, flags=re.S)
    assert "<script" not in outside_code and _safe(outside_code, allow_newline=True)


def test_card_of_the_report_cases(sd1):
    patch = random_patch(sd1).with_info(
        concepts=(PatchConcept(INJECTION, "object"), PatchConcept("a | b\n| c", "style")),
        title="x" * 10_000_000,
        results={"concepts": {"a|b\nc": {"acc": "1|2"}}},
    )
    card = str(model_card(patch, repo_id="acme/x", filename=WEIGHT_NAME))
    assert len(card) < 20_000  # the 10 MB title is cut
    assert "(9,999,800 more characters)" in card
    assert 'pipe("a photo of cat\\") ; import os; os.system(\\"echo pwned\\") #")' in card
    assert '--prompt \'a photo of cat") ; import os; os.system("echo pwned") #\'' in card
    table = [line for line in card.splitlines() if line.startswith("| ") and "style" in line]
    assert table == ["| a \\| b \\| c | style |"]
    assert "| a\\|b c | 1\\|2 |" in card


def test_inspect_shows_hostile_headers_as_text(capsys, sd1, tmp_path):
    patch = random_patch(sd1).with_info(
        concepts=(PatchConcept(ESCAPES, "object"),),
        title="\x1b]2;pwned\x07" + "t" * 10_000_000,
        base_model="\x1b[2J/home/me",
        config={"note\r": "\x1b[31m"},
    )
    path = patch.save(tmp_path / "hostile.safetensors")
    code, out, _ = run(capsys, "inspect", str(path))
    assert code == 0 and _safe(out, allow_newline=True) and "\x1b" not in out and "\r" not in out
    assert "\\x1b]2;pwned\\x07" in out and "more characters)" in out and len(out) < 20_000
    code, out, _ = run(capsys, "inspect", str(path), "--json")
    data = json.loads(out)  # JSON escapes it; scripts get the exact text
    assert data["concepts"][0]["name"] == ESCAPES and "\x1b" not in out


def test_errors_and_warnings_reach_the_terminal_escaped(capsys, pipeline_dirs, sd1, tmp_path):
    patch = random_patch(sd1).with_info(title="\x1b]0;t\x07x", base_hash="0" * 64, base_model="\x1b[2J")
    path = patch.save(tmp_path / "p.safetensors")
    code, _, err = run(capsys, "apply", str(pipeline_dirs["sd1"]), str(path), "-o", str(tmp_path / "f"))
    warning = [line for line in err.splitlines() if line.startswith("fmnpatch: warning:")]
    assert code == 0 and len(warning) == 1 and "\x1b" not in err and "\\x1b]0;t\\x07x" in warning[0]
    bad = tmp_path / "\x1b[31mevil.safetensors"
    code, _, err = run(capsys, "inspect", str(bad))
    assert code == 2 and "\x1b" not in err and "\\x1b[31mevil" in err


def test_a_missing_hash_is_reported_by_inspect_and_refused_by_strict(capsys, pipeline_dirs, sd1, tmp_path):
    import safetensors.torch

    patch = random_patch(sd1)
    header = patch.header()
    header.pop("modelspec.hash_sha256")
    path = tmp_path / "nohash.safetensors"
    safetensors.torch.save_file(patch.state_dict(), str(path), metadata=header)
    assert Patch.load(path).verified is False and Patch.load(patch.save(tmp_path / "ok.safetensors")).verified
    code, out, _ = run(capsys, "inspect", str(path))
    assert code == 0 and "NOT VERIFIED: the header carries no hash" in out
    code, _, err = run(
        capsys, "apply", str(pipeline_dirs["sd1"]), str(path), "--strict", "-o", str(tmp_path / "f")
    )
    assert code == 2 and "carries no tensor hash" in err and not (tmp_path / "f").exists()
