"""A base folder's structure, checked before any library reads it: the way a patch file is checked before it loads.

A diffusers pipeline folder is ``model_index.json`` (the pipeline class and, per component, its library and
class) and one subfolder per component. ``check_folder`` reads only small files and the safetensors headers, and
refuses, in one line naming the component and the fix:

- ``model_index.json`` that is not a regular file, not a JSON object, or names no pipeline class diffusers has;
- a component it names that is missing, or whose library/class diffusers or transformers do not have;
- anything in a component folder that is not a regular file or folder (a FIFO or device node is never opened);
- a model's ``config.json`` that is not a JSON object, or whose size and count fields are not positive integers;
- a model without safetensors weights (pickle files are never read), weights safetensors cannot read, or
  weights stored as integers;
- a text encoder without its tokenizer, a tokenizer folder without a non-empty vocabulary file.

What only the loaded weights tell (missing keys, shapes that do not fit the config, NaN or infinite values) is
checked as the components load (``loading``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from ..errors import BaseFolderError

INDEX: Final = "model_index.json"
#: The fix for a damaged index: the folder as a whole is not what was downloaded.
RECOPY: Final = "the pipeline folder is damaged: copy it again from the original model"
#: The weights file a component's library loads, by library (sharded: the same name plus ``.index.json``).
WEIGHTS: Final = {"diffusers": "diffusion_pytorch_model.safetensors", "transformers": "model.safetensors"}
#: Pickle weight files: never read (``torch.load`` can run code); a folder holding only these is refused.
PICKLES: Final = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Vocabulary files a tokenizer folder may load from: one of these sets, each file non-empty.
VOCABULARIES: Final = (
    ("tokenizer.json",),
    ("vocab.json", "merges.txt"),
    ("spiece.model",),
    ("vocab.txt",),
    ("sentencepiece.bpe.model",),
)
#: Config fields that size a model or count its parts: a positive integer (or a list of them) where present and
#: not null. Fields that may legitimately be zero (token ids, dropout, shifts) are not listed.
POSITIVE_FIELDS: Final = frozenset(
    {
        # diffusers UNets, VAEs, transformers
        "in_channels",
        "out_channels",
        "latent_channels",
        "sample_size",
        "cross_attention_dim",
        "block_out_channels",
        "layers_per_block",
        "attention_head_dim",
        "num_attention_heads",
        "norm_num_groups",
        "transformer_layers_per_block",
        "num_layers",
        "num_single_layers",
        "patch_size",
        "joint_attention_dim",
        "caption_projection_dim",
        "pooled_projection_dim",
        "pos_embed_max_size",
        # transformers text encoders (CLIP, T5)
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "max_position_embeddings",
        "vocab_size",
        "projection_dim",
        "d_model",
        "d_kv",
        "d_ff",
        "num_heads",
        # schedulers
        "num_train_timesteps",
    }
)
#: Config fields that are positive real numbers where present and not null.
POSITIVE_REALS: Final = frozenset({"scaling_factor"})
#: The safetensors dtypes a weight may be stored in.
FLOATING: Final = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Kind = Literal["model", "tokenizer", "scheduler", "other"]


@dataclass(frozen=True)
class Component:
    """One entry of ``model_index.json``: the subfolder ``name`` holds a ``cls`` of ``library``."""

    name: str  # the pipeline attribute and subfolder: "unet", "text_encoder_2"
    library: str  # "diffusers", "transformers", or a diffusers pipeline module ("stable_diffusion")
    class_name: str
    kind: Kind
    cls: type | None  # the class itself, where it was resolved (diffusers or transformers)


@dataclass(frozen=True)
class Layout:
    """A checked pipeline folder: its pipeline class and the components it names."""

    folder: Path
    pipeline: str  # model_index.json's _class_name
    components: tuple[Component, ...]

    @property
    def models(self) -> tuple[Component, ...]:
        return tuple(c for c in self.components if c.kind == "model")

    @property
    def tokenizers(self) -> tuple[Component, ...]:
        return tuple(c for c in self.components if c.kind == "tokenizer")


class Refusal:
    """Builds the one-line refusals for one base: ``base folder 'FOLDER': WHERE: PROBLEM; FIX``."""

    def __init__(self, base: str) -> None:
        self.base = base  # how the base is shown: "base folder './sd15'", "base 'org/name'"

    @classmethod
    def of(cls, folder: Path) -> Refusal:
        return cls(f"base folder {str(folder)!r}")

    def __call__(self, where: str, problem: str, fix: str | None = None) -> BaseFolderError:
        component = where.split("/")[0]
        fix = fix or f"restore {component} from the original model (download or copy it again)"
        return BaseFolderError(f"{self.base}: {where}: {problem}; {fix}")


def check_folder(folder: str | os.PathLike[str]) -> Layout:
    """Check a pipeline folder's structure (see the module docstring); returns what it holds, or raises
    ``BaseFolderError`` naming the first problem and its fix."""
    folder = Path(folder)
    refuse = Refusal.of(folder)
    index = read_index(folder)
    pipeline = _pipeline_class(index, refuse)
    components = tuple(_components(folder, index, refuse))
    for component in components:
        _check_tree(folder, component.name, refuse)
        if component.kind == "model":
            _check_model(folder, component, refuse)
        elif component.kind == "tokenizer":
            _check_tokenizer(folder, component.name, refuse)
        elif component.kind == "scheduler":
            _check_config(folder, f"{component.name}/scheduler_config.json", refuse)
    _check_pairs(components, refuse)
    return Layout(folder, pipeline, components)


# ------------------------------------------------------------------------------------------------- the index
def read_index(folder: Path) -> dict[str, Any]:
    """``model_index.json`` as a JSON object, read only where it is a regular file."""
    return _read_json(folder, INDEX, Refusal.of(folder), fix=RECOPY)


def _pipeline_class(index: dict[str, Any], refuse: Refusal) -> str:
    import diffusers

    name = index.get("_class_name")
    fix = f"{RECOPY}, or name a diffusers pipeline class there (e.g. StableDiffusionPipeline)"
    if not isinstance(name, str) or not name:
        raise refuse(INDEX, "names no pipeline class (_class_name)", fix)
    cls = getattr(diffusers, name, None) if _NAME.match(name) else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        shown = json.dumps(name[:80])
        raise refuse(
            INDEX, f"names the pipeline class {shown}, which diffusers {diffusers.__version__} lacks", fix
        )
    return name


def _components(folder: Path, index: dict[str, Any], refuse: Refusal) -> Iterator[Component]:
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list | tuple):
            continue  # pipeline settings (requires_safety_checker, ...) are not components
        if len(entry) == 2 and entry[0] is None and entry[1] is None:
            continue  # a component the pipeline goes without
        if not (
            _NAME.match(name)
            and len(entry) == 2
            and all(isinstance(e, str) and _NAME.match(e) for e in entry)
        ):
            raise refuse(
                INDEX,
                f"the entry {json.dumps(name[:60])} is {json.dumps(entry)[:80]}, not [library, class]",
                RECOPY,
            )
        library, class_name = entry
        cls = _resolve(library, class_name, refuse, name)
        if cls is None and library in ("diffusers", "transformers"):
            raise refuse(
                INDEX,
                f"component {name} is a {library}.{class_name}, which {library} does not have",
                f"{RECOPY}, or upgrade diffusers and transformers",
            )
        path = folder / name
        if not path.is_dir():
            what = "is not a folder" if path.exists() or path.is_symlink() else "is missing"
            raise refuse(name, f"{what}, though {INDEX} names it")
        yield Component(name, library, class_name, _kind(cls), cls)


def _resolve(library: str, class_name: str, refuse: Refusal, name: str) -> type | None:
    """The class a component entry names: in diffusers or transformers, or a diffusers pipeline module's class
    (None: neither has it)."""
    try:
        if library in ("diffusers", "transformers"):
            module: Any = importlib.import_module(library)
        else:
            import diffusers.pipelines

            module = getattr(diffusers.pipelines, library, None)
        cls = getattr(module, class_name, None) if module is not None else None
    except (ImportError, RuntimeError) as e:  # a class whose optional dependency is not installed
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise refuse(
            INDEX,
            f"component {name} is a {library}.{class_name}, which cannot be imported ({first})",
            "install what it needs, or use a pipeline without it",
        ) from None
    return cls if isinstance(cls, type) else None


def _kind(cls: type | None) -> Kind:
    if cls is None:
        return "other"
    from diffusers import ModelMixin, SchedulerMixin
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    if issubclass(cls, ModelMixin | PreTrainedModel):
        return "model"
    if issubclass(cls, PreTrainedTokenizerBase):
        return "tokenizer"
    if issubclass(cls, SchedulerMixin):
        return "scheduler"
    return "other"


# -------------------------------------------------------------------------------------------- the components
def _check_tree(folder: Path, name: str, refuse: Refusal) -> None:
    """Every entry under a component folder is a regular file or a folder: a FIFO, socket or device node there is
    refused before any library could open it (and block, or read forever)."""
    for root, dirs, files in os.walk(folder / name):
        for entry in (*dirs, *files):
            path = Path(root, entry)
            try:
                mode = os.stat(path).st_mode
            except OSError as e:  # a dangling link, a loop, no permission
                raise refuse(_rel(folder, path), f"cannot be read ({e.strerror or e})") from None
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise refuse(_rel(folder, path), f"is {_file_type(mode)}, not a file")


def _check_model(folder: Path, component: Component, refuse: Refusal) -> None:
    name = component.name
    _check_config(folder, f"{name}/config.json", refuse)
    weights = WEIGHTS["diffusers" if _is_diffusers(component) else "transformers"]
    single, sharded = folder / name / weights, folder / name / f"{weights}.index.json"
    if single.exists():
        files = [single]
    elif sharded.exists():
        files = _shards(folder, f"{name}/{weights}.index.json", refuse)
    else:
        pickles = sorted(p.name for p in (folder / name).iterdir() if p.suffix in PICKLES)
        if pickles:
            raise refuse(
                name,
                f"has only pickle weights ({pickles[0]}), which fmn-patch never loads (they can run code)",
                f"convert {name} to safetensors ({weights}), e.g. with diffusers' save_pretrained",
            )
        others = sorted(p.name for p in (folder / name).glob("*.safetensors"))
        found = f" (there is {others[0]}: a variant, which is not loaded)" if others else ""
        raise refuse(f"{name}/{weights}", f"is missing{found}")
    for path in files:
        _check_weights(folder, path, refuse)


def _is_diffusers(component: Component) -> bool:
    from diffusers import ModelMixin

    return component.cls is not None and issubclass(component.cls, ModelMixin)


def _shards(folder: Path, where: str, refuse: Refusal) -> list[Path]:
    index = _read_json(folder, where, refuse)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise refuse(where, "has no weight_map")
    names = sorted({v for v in weight_map.values() if isinstance(v, str)})
    if len(names) != len(set(weight_map.values())) or any("/" in n or n.startswith(".") for n in names):
        raise refuse(where, "names shards that are not file names in its folder")
    shards = [(folder / where).parent / n for n in names]
    for shard in shards:
        if not shard.exists():
            raise refuse(_rel(folder, shard), "is missing (the shard index names it)")
    return shards


def _check_weights(folder: Path, path: Path, refuse: Refusal) -> None:
    """The weights file is a regular file safetensors reads, holding tensors, none of its weights integers."""
    import safetensors

    where = _rel(folder, path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise refuse(where, f"is {_file_type(mode)}, not a file")
    if os.stat(path).st_size == 0:
        raise refuse(where, "is empty (0 bytes)")
    try:
        with safetensors.safe_open(str(path), "pt", device="cpu") as f:
            dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, safetensors.SafetensorError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise refuse(where, f"is not a safetensors file safetensors can read ({first[:120]})") from None
    if not dtypes:
        raise refuse(where, "holds no tensors")
    for key, dtype in sorted(dtypes.items()):
        # weights and biases are floating point; integer buffers (CLIP's position_ids) are allowed
        if key.endswith((".weight", ".bias")) and dtype not in FLOATING:
            raise refuse(
                where, f"stores {key[:120]} as {dtype}; weights must be floating point (F32, F16, BF16)"
            )


def _check_config(folder: Path, where: str, refuse: Refusal) -> None:
    config = _read_json(folder, where, refuse)
    for key, value in config.items():
        if key in POSITIVE_FIELDS and value is not None and not _positive_ints(value):
            raise refuse(where, f"{key} is {_shown(value)}; it must be a positive integer")
        if key in POSITIVE_REALS and value is not None and not _positive_real(value):
            raise refuse(where, f"{key} is {_shown(value)}; it must be a positive number")


def _positive_ints(value: Any) -> bool:
    """A positive int, or a non-empty (nested) list of them (per-block values: SDXL's transformer_layers_per_block)."""
    if isinstance(value, list):
        return bool(value) and all(_positive_ints(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < float("inf")


def _check_tokenizer(folder: Path, name: str, refuse: Refusal) -> None:
    present = {p.name for p in (folder / name).iterdir()}
    for files in VOCABULARIES:
        if all(f in present for f in files):
            for f in files:
                if (folder / name / f).stat().st_size == 0:
                    raise refuse(f"{name}/{f}", "is empty (0 bytes)")
                if f.endswith(".json"):
                    _read_json(folder, f"{name}/{f}", refuse)
            break
    else:
        raise refuse(
            name, "holds no vocabulary (tokenizer.json, vocab.json with merges.txt, or spiece.model)"
        )
    if "tokenizer_config.json" in present:
        _read_json(folder, f"{name}/tokenizer_config.json", refuse)


def _check_pairs(components: tuple[Component, ...], refuse: Refusal) -> None:
    """Every text encoder has its tokenizer (``text_encoder_3`` reads what ``tokenizer_3`` makes)."""
    names = {c.name for c in components}
    for c in components:
        if c.name.startswith("text_encoder"):
            tokenizer = "tokenizer" + c.name.removeprefix("text_encoder")
            if tokenizer not in names:
                raise refuse(
                    INDEX,
                    f"names {c.name} but not its tokenizer {tokenizer}",
                    f"restore {tokenizer} (and its {INDEX} entry) from the original model",
                )


# --------------------------------------------------------------------------------------------------- helpers
def _read_json(folder: Path, where: str, refuse: Refusal, fix: str | None = None) -> dict[str, Any]:
    """A JSON object from ``folder/where``, read only when it is a regular file (a FIFO would block)."""
    path = folder / where
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise refuse(where, "is missing", fix) from None
    except OSError as e:
        raise refuse(where, f"cannot be read ({e.strerror or e})", fix) from None
    if not stat.S_ISREG(mode):
        raise refuse(where, f"is {_file_type(mode)}, not a file", fix)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise refuse(where, f"cannot be read ({e.strerror or e})", fix) from None
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, or nested past the parser's depth
        raise refuse(where, f"is not JSON ({str(e).splitlines()[0][:80]})", fix) from None
    if not isinstance(data, dict):
        raise refuse(where, f"is a JSON {type(data).__name__}, not an object", fix)
    return data


def _file_type(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def _rel(folder: Path, path: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:40] + "..."
