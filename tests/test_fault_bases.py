"""Damaged base folders: every command that loads a base refuses one in one line naming the component, exit 2.

The damaged bases are the two toy pipelines (UNet ``toy`` and MMDiT ``toy-sd3``), copied once per module and then,
per case, hard-linked into a fresh folder where exactly one component is damaged (the damaged file is replaced,
never written through the link). The damages are generated: every weights damage on every model component, every
config damage on every model config, the index and tokenizer damages. Each case runs one command in-process and
asserts exit 2, one error line naming the component (besides progress lines), no traceback, and nothing created,
changed or left behind. The default run gives each case one command (cycling through edit, train, apply, eval,
attack, correct, the base given by --base, FMNPATCH_BASE or the positional BASE); the slow run, every command.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import random_patch
from safetensors.torch import load_file, save_file

from fmn_patch.cli.app import main
from fmn_patch.errors import BaseFolderError
from fmn_patch.families.base import as_base, check_base, load_base
from fmn_patch.toy.paths import toy_pipeline_path, toy_sd3_pipeline_path

TOYS = {"toy": toy_pipeline_path, "toy-sd3": toy_sd3_pipeline_path}
MODELS = {
    "toy": ("unet", "text_encoder", "vae"),
    "toy-sd3": ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"),
}
# Per model config: a field given a string, a field made negative, and a size field with a value that no longer fits
# the stored weights.
CONFIG_FIELDS = {
    ("toy", "unet"): ("in_channels", "layers_per_block", ("cross_attention_dim", 32)),
    ("toy", "text_encoder"): ("num_hidden_layers", "hidden_size", ("hidden_size", 128)),
    ("toy", "vae"): ("block_out_channels", "latent_channels", ("latent_channels", 8)),
    ("toy-sd3", "transformer"): ("patch_size", "num_layers", ("joint_attention_dim", 96)),
    ("toy-sd3", "text_encoder"): ("vocab_size", "num_attention_heads", ("hidden_size", 96)),
    ("toy-sd3", "text_encoder_2"): ("max_position_embeddings", "intermediate_size", ("hidden_size", 96)),
    ("toy-sd3", "text_encoder_3"): ("num_heads", "d_kv", ("d_model", 64)),
    ("toy-sd3", "vae"): ("sample_size", "out_channels", ("latent_channels", 8)),
}
#: The damages only loading can tell (the folder check passes them); the others are refused before any loading.
AT_LOADING = {
    "drop-a-key",
    "nan",
    "inf",
    "config-size-mismatch",
    "tokenizer-json-not-a-tokenizer",
    "tokenizer-of-another-model",
}


# ------------------------------------------------------------------------------------------------ damages
def _weights(folder: Path) -> Path:
    return next(folder.glob("*.safetensors"))


def _rewrite(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(path)
    change(tensors)
    path.unlink()  # the file is a hard link to the module's copy: replace it, never write through it
    save_file(tensors, path, metadata={"format": "pt"})


def _replace(path: Path, data: bytes | None = None) -> Path:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if data is not None:
        path.write_bytes(data)
    return path


def _first_weight(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k in sorted(tensors) if k.endswith(".weight") and tensors[k].is_floating_point())


def _poke(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        key = _first_weight(tensors)
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value

    return change


def _to_int(tensors: dict[str, torch.Tensor]) -> None:
    key = _first_weight(tensors)
    tensors[key] = tensors[key].to(torch.int32)


def _drop(tensors: dict[str, torch.Tensor]) -> None:
    del tensors[sorted(tensors)[len(tensors) // 2]]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    _replace(path, data[: len(data) // 2])


def _edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    data = change(data) or data
    _replace(path, json.dumps(data).encode())


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, value)


def _fifo(path: Path) -> None:
    _replace(path)
    os.mkfifo(path)


def _directory(path: Path) -> None:
    _replace(path)
    path.mkdir()


WEIGHT_DAMAGES: dict[str, Callable[[Path], None]] = {
    "drop-a-key": lambda p: _rewrite(p, _drop),
    "nan": lambda p: _rewrite(p, _poke(float("nan"))),
    "inf": lambda p: _rewrite(p, _poke(float("-inf"))),
    "int32": lambda p: _rewrite(p, _to_int),
    "zero-bytes": lambda p: _replace(p, b""),
    "garbage": lambda p: _replace(p, b"\x93garbage, not a safetensors header" * 64),
    "truncated": _truncate,
    "directory": _directory,
    "fifo": _fifo,
    "missing": lambda p: _replace(p),
    "pickle-only": lambda p: (_replace(p), _replace(p.with_suffix(".bin"), b"\x80\x04not unpickled")),
}
CONFIG_DAMAGES: dict[str, Callable[[Path, tuple], None]] = {
    "wrong-type": lambda p, fields: _edit_json(p, _set(fields[0], "four")),
    "negative": lambda p, fields: _edit_json(p, _set(fields[1], -2)),
    "size-mismatch": lambda p, fields: _edit_json(p, _set(*fields[2])),
    "not-json": lambda p, _: _replace(p, b"{not json"),
    "fifo": lambda p, _: _fifo(p),
}


@dataclass(frozen=True)
class Damage:
    family: str  # toy, toy-sd3
    kind: str  # what is done, for the test id
    component: str  # what the error line must name
    apply: Callable[[Path], None]

    def __str__(self) -> str:
        return f"{self.family}:{self.component}:{self.kind}"

    @property
    def at_loading(self) -> bool:
        return self.kind in AT_LOADING


def _index(change: Callable[[dict], object]) -> Callable[[Path], None]:
    return lambda base: _edit_json(base / "model_index.json", change)


def damages() -> list[Damage]:
    """Every damage, one component at a time, for both toy pipelines."""
    found: list[Damage] = []
    for family, models in MODELS.items():
        for model in models:
            for kind, damage in WEIGHT_DAMAGES.items():
                found.append(Damage(family, kind, model, lambda b, m=model, d=damage: d(_weights(b / m))))
            fields = CONFIG_FIELDS[(family, model)]
            for kind, change in CONFIG_DAMAGES.items():
                found.append(
                    Damage(
                        family,
                        f"config-{kind}",
                        model,
                        lambda b, m=model, c=change, f=fields: c(b / m / "config.json", f),
                    )
                )
        denoiser = models[0]
        found += [
            Damage(
                family, "unknown-class", "model_index.json", _index(_set("_class_name", "NoSuchPipeline"))
            ),
            Damage(family, "empty-object", "model_index.json", _index(lambda d: d.clear())),
            Damage(family, "list", "model_index.json", lambda b: _replace(b / "model_index.json", b"[]")),
            Damage(family, "not-json", "model_index.json", lambda b: _replace(b / "model_index.json", b"{x")),
            Damage(family, "fifo", "model_index.json", lambda b: _fifo(b / "model_index.json")),
            Damage(
                family,
                "unknown-component-class",
                "model_index.json",
                _index(_set(denoiser, ["diffusers", "NoSuchModel"])),
            ),
            Damage(family, "component-missing", "vae", lambda b: _replace(b / "vae")),
            Damage(
                family,
                "scheduler-negative",
                "scheduler",
                lambda b: _edit_json(b / "scheduler/scheduler_config.json", _set("num_train_timesteps", -1)),
            ),
            Damage(
                family, "scheduler-fifo", "scheduler", lambda b: _fifo(b / "scheduler/scheduler_config.json")
            ),
            Damage(
                family,
                "tokenizer-json-missing",
                "tokenizer",
                lambda b: _replace(b / "tokenizer/tokenizer.json"),
            ),
            Damage(
                family,
                "tokenizer-json-empty",
                "tokenizer",
                lambda b: _replace(b / "tokenizer/tokenizer.json", b""),
            ),
            Damage(
                family,
                "tokenizer-json-not-a-tokenizer",
                "tokenizer",
                lambda b: _replace(b / "tokenizer/tokenizer.json", b'{"version": "1.0"}'),
            ),
        ]
    found += [
        Damage("toy-sd3", "tokenizer-folder-missing", "tokenizer_3", lambda b: _replace(b / "tokenizer_3")),
        Damage("toy-sd3", "tokenizer-not-in-index", "tokenizer_3", _index(_set("tokenizer_3", [None, None]))),
        Damage(
            "toy-sd3",
            "tokenizer-of-another-model",
            "tokenizer_3",
            lambda b: _replace(
                b / "tokenizer_3/tokenizer.json", (b / "tokenizer/tokenizer.json").read_bytes()
            ),
        ),
    ]
    return found


DAMAGES = damages()


# ----------------------------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Command:
    name: str
    args: Callable[[str, Path, Path], list[str]]  # (base, patch, out) -> argv
    via_env: bool = False  # the base given by FMNPATCH_BASE, not on the command line
    families: tuple[str, ...] = ("toy", "toy-sd3")


COMMANDS = [
    Command(
        "edit",
        lambda b, p, o: ["edit", "circle", "--base", b, "-o", str(o / "p.safetensors")],
        families=("toy",),
    ),
    Command(
        "train",
        lambda b, p, o: ["train", "circle", "--base", b, "--steps", "1", "-o", str(o / "p.safetensors")],
    ),
    Command("apply", lambda b, p, o: ["apply", b, str(p), "--output", str(o / "fused")]),
    Command(
        "eval", lambda b, p, o: ["eval", b, str(p), "--seeds", "1", "--steps", "1", "--output", str(o / "r")]
    ),
    Command(
        "attack",
        lambda b, p, o: ["attack", b, str(p), "--concept", "circle", "--steps", "1", "--out", str(o / "a")],
    ),
    Command(
        "correct",
        lambda b, p, o: [
            "correct",
            "circle",
            "--attribute",
            "colour",
            "--base",
            b,
            "--steps",
            "1",
            "-o",
            str(o / "c.safetensors"),
        ],
    ),
    Command(
        "train-env", lambda b, p, o: ["train", "circle", "--steps", "1", "-o", str(o / "p.safetensors")], True
    ),
    Command(
        "edit-each",
        lambda b, p, o: ["edit", "circle", "square", "--each", "--base", b, "-o", str(o / "e")],
        families=("toy",),
    ),
    Command(
        "train-each",
        lambda b, p, o: ["train", "circle", "--each", "--steps", "1", "--base", b, "-o", str(o / "t")],
    ),
]


def cases(slow: bool) -> list[pytest.param]:
    """(damage, command): each damage with one command, cycling through them (default), or with each of the
    other commands (slow)."""
    found = []
    for turn, damage in enumerate(DAMAGES):
        usable = [c for c in COMMANDS if damage.family in c.families]
        first = usable[turn % len(usable)]
        chosen = [c for c in usable if c is not first] if slow else [first]
        found += [pytest.param(damage, c, id=f"{damage}-{c.name}") for c in chosen]
    return found


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each toy pipeline copied once, and a patch made for it: {family: (folder, patch)}."""
    root = tmp_path_factory.mktemp("pristine")
    out = {}
    for family, locate in TOYS.items():
        folder = Path(shutil.copytree(locate(), root / family))
        patch = random_patch(load_base(str(folder))).save(root / f"{family}.safetensors")
        out[family] = (folder, patch)
    return out


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root``: its mode, and a file's size and mtime, without opening anything (a folder's
    mtime is left out: a writability probe of the output folder creates and removes a file there)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[str(Path(folder, name).relative_to(root))] = (os.lstat(Path(folder, name)).st_mode, 0, 0)
        for name in files:
            st = os.lstat(Path(folder, name))
            found[str(Path(folder, name).relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


PROGRESS = re.compile(r"^fmnpatch: (?!error).* \.\.\.$")  # a phase's line on a non-terminal stderr


def _run(capfd: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capfd.readouterr()
    return int(e.value.code or 0), out, err


def _damaged(pristine, damage: Damage, tmp_path: Path) -> Path:
    """A hard-linked copy of the damage's toy pipeline, with the damage done to it."""
    base = tmp_path / "base"
    shutil.copytree(pristine[damage.family][0], base, copy_function=os.link)
    damage.apply(base)
    return base


def _check(damage: Damage, command: Command, pristine, tmp_path, capfd, monkeypatch) -> None:
    base = _damaged(pristine, damage, tmp_path)
    patch = pristine[damage.family][1]
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    if command.via_env:
        monkeypatch.setenv("FMNPATCH_BASE", str(base))
    before = _tree(tmp_path)
    code, stdout, err = _run(capfd, command.args(str(base), patch, out))
    errors = [line for line in err.splitlines() if not PROGRESS.match(line)]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith("fmnpatch: error: "), err
    assert re.search(rf"\b{re.escape(damage.component)}\b", errors[0]), errors[0]
    assert stdout == ""
    assert _tree(tmp_path) == before  # nothing created, changed or left behind; the base untouched


@pytest.mark.parametrize("damage", DAMAGES, ids=str)
def test_the_folder_check_finds_what_needs_no_loading(damage, pristine, tmp_path):
    """``check_base`` (what edit and train run before --each starts) refuses every damage that needs no loading,
    naming its component, and passes the others, which only loading tells."""
    base = _damaged(pristine, damage, tmp_path)
    if damage.at_loading:
        check_base(str(base))
    else:
        with pytest.raises(BaseFolderError, match=rf"\b{re.escape(damage.component)}\b"):
            check_base(str(base))


@pytest.fixture
def chatty_libraries():
    """diffusers' and transformers' loggers at their default level (the CLI quiets them; a library user may not)."""
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.mark.parametrize("damage", [d for d in DAMAGES if d.at_loading], ids=str)
def test_load_base_refuses_in_its_own_words_alone(damage, pristine, tmp_path, capfd, chatty_libraries):
    """What only loading tells is refused by ``load_base`` with ``BaseFolderError``, and the libraries' own
    warnings and load reports (a weight "newly initialized", a LOAD REPORT table) are not printed."""
    base = _damaged(pristine, damage, tmp_path)
    capfd.readouterr()
    with pytest.raises(BaseFolderError, match=rf"\b{re.escape(damage.component)}\b"):
        load_base(str(base))
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize(("damage", "command"), cases(slow=False))
def test_a_damaged_base_is_refused_in_one_line(damage, command, pristine, tmp_path, capfd, monkeypatch):
    _check(damage, command, pristine, tmp_path, capfd, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize(("damage", "command"), cases(slow=True))
def test_every_command_refuses_every_damage(damage, command, pristine, tmp_path, capfd, monkeypatch):
    _check(damage, command, pristine, tmp_path, capfd, monkeypatch)


@pytest.mark.parametrize("family", sorted(TOYS))
def test_an_intact_copy_loads_as_diffusers_loads_it(family, pristine, tmp_path):
    """The control: the hard-linked copy, undamaged, passes every check, is the same toy world, and its components
    loaded one at a time are the pipeline diffusers loads in one call (weights, configs, vocabularies)."""
    from diffusers import DiffusionPipeline

    base = tmp_path / "base"
    shutil.copytree(pristine[family][0], base, copy_function=os.link)
    ours = load_base(str(base))
    assert ours.world is not None and ours.world.name == family
    theirs = as_base(DiffusionPipeline.from_pretrained(base))
    assert ours.family.identity.fingerprint() == theirs.family.identity.fingerprint()


def test_a_fused_model_that_overflows_is_never_saved(pristine, tmp_path, capfd, monkeypatch):
    """apply --output on a float16 base with a patch whose sum overflows float16: refused, nothing saved."""
    folder, _ = pristine["toy"]
    big = random_patch(load_base(str(folder)), scale=300.0).save(tmp_path / "big.safetensors")
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    code, stdout, err = _run(
        capfd, ["apply", str(folder), str(big), "--dtype", "float16", "--output", "fused"]
    )
    errors = [line for line in err.splitlines() if line.startswith("fmnpatch: error")]
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert len(errors) == 1 and "NaN or infinite" in errors[0] and "float16" in errors[0], err
    assert _tree(tmp_path) == before


def test_a_pipeline_from_elsewhere_gets_the_loaded_weight_checks(pristine):
    """What ``load_base`` runs on a pipeline it did not load from a folder (a Hub id, a family's own loader):
    a NaN weight, an integer weight and an empty vocabulary are each refused naming the component."""
    from diffusers import DiffusionPipeline

    from fmn_patch.families.loading import check_pipeline

    pipe = DiffusionPipeline.from_pretrained(pristine["toy"][0])
    check_pipeline(pipe, "org/name")
    weight = pipe.unet.conv_in.weight
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
    with pytest.raises(BaseFolderError, match=r"^base 'org/name': unet: .*NaN"):
        check_pipeline(pipe, "org/name")
    pipe.unet.conv_in.weight = torch.nn.Parameter(
        torch.zeros(weight.shape, dtype=torch.int32), requires_grad=False
    )
    with pytest.raises(BaseFolderError, match=r"unet: conv_in\.weight is int32"):
        check_pipeline(pipe, "org/name")
    pipe.unet.conv_in.weight = torch.nn.Parameter(torch.zeros(weight.shape))
    pipe.tokenizer.get_vocab = dict
    with pytest.raises(BaseFolderError, match=r"tokenizer: its vocabulary is empty"):
        check_pipeline(pipe, "org/name")
