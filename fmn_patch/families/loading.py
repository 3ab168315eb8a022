"""A checked base folder loaded one component at a time, each checked as it arrives.

Each component loads with its own class's ``from_pretrained`` (models from safetensors only, with the library's
loading report), so that whatever goes wrong is told by the component it is in, in one line: a weight the file
lacks, a weight whose shape does not fit the config, a library error. The weights are checked in the same pass:
floating point and finite. Tokenizers must have a vocabulary that fits their text encoder. diffusers then
assembles the pipeline from the loaded components. The libraries' own output while they load (warnings, load
reports, multi-line errors) is caught: a damaged component is told by one line of ours, not by theirs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .folder import Component, Layout, Refusal

#: The libraries whose loggers speak while a base loads.
LIBRARIES = ("diffusers", "transformers", "huggingface_hub", "accelerate")


@contextlib.contextmanager
def library_output_caught() -> Iterator[io.StringIO]:
    """Within the block the libraries' loggers are silent, warnings are not shown and what is written to
    ``sys.stderr`` is kept in the yielded buffer, not printed. (``sys.stderr`` is process-wide: other threads'
    writes meanwhile are kept too.)"""
    loggers = [logging.getLogger(name) for name in LIBRARIES]
    levels = [logger.level for logger in loggers]
    buffer = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(buffer):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL + 1)
        try:
            yield buffer
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def load_folder(layout: Layout, dtype: torch.dtype) -> Any:
    """The pipeline of a checked folder (``folder.check_folder``), every model, tokenizer and scheduler loaded and
    checked here; raises ``BaseFolderError`` naming the component at fault."""
    from diffusers import DiffusionPipeline

    refuse = Refusal.of(layout.folder)
    loaded: dict[str, Any] = {}
    with library_output_caught():
        for component in layout.components:
            if component.kind != "other":  # others (image processors, custom classes): diffusers loads them
                loaded[component.name] = _load(layout, component, dtype, refuse)
        _check_tokenizers(loaded, refuse)
        try:
            return DiffusionPipeline.from_pretrained(
                layout.folder, dtype=dtype, use_safetensors=True, **loaded
            )
        except MemoryError:
            raise  # not the folder's fault
        except Exception as e:  # the library's own error, whatever its type: told in one line
            raise refuse(
                "model_index.json", f"diffusers cannot assemble the pipeline ({_first_line(e)})"
            ) from e


def _load(layout: Layout, component: Component, dtype: torch.dtype, refuse: Refusal) -> Any:
    assert component.cls is not None  # kind "model", "tokenizer" and "scheduler" are resolved classes
    path = layout.folder / component.name
    kwargs: dict[str, Any] = {}
    if component.kind == "model":
        kwargs = {"dtype": dtype, "use_safetensors": True, "output_loading_info": True}
    try:
        result = component.cls.from_pretrained(path, **kwargs)  # type: ignore[attr-defined]
    except MemoryError:
        raise  # not the folder's fault
    except Exception as e:  # the library's own error, whatever its type (tokenizers raises a bare Exception)
        what = _mismatch(e) or f"{component.library} cannot load it ({_first_line(e)})"
        raise refuse(component.name, what) from e
    if component.kind != "model":
        return result
    model, report = result
    for key in ("missing_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in report.get(key) or ())
        if keys:
            problem = "lack" if key == "missing_keys" else "have another shape than its config.json gives to"
            raise refuse(
                component.name,
                f"its weights {problem} {len(keys)} tensor(s) the model has (e.g. {keys[0][:100]})",
            )
    check_module(model, component.name, refuse)
    return model


def check_module(module: nn.Module, name: str, refuse: Refusal) -> None:
    """Every parameter of a loaded model is floating point and finite (as loaded, in its dtype)."""
    for key, tensor in module.named_parameters():
        if tensor.is_meta:
            raise refuse(name, f"its weights lack {key[:100]}")
        if not tensor.is_floating_point():
            raise refuse(
                name,
                f"{key[:100]} is {str(tensor.dtype).removeprefix('torch.')}; weights must be floating point",
            )
        if not bool(torch.isfinite(tensor.detach()).all()):
            dtype = str(tensor.dtype).removeprefix("torch.")
            raise refuse(name, f"its weights hold NaN or infinite values (in {key[:100]}, as {dtype})")


def check_pipeline(pipe: Any, where: str) -> None:
    """The same checks on a pipeline loaded by other means (a Hub id, a family's own loader)."""
    refuse = Refusal(f"base {where!r}")
    components = dict(pipe.components)
    for name, component in components.items():
        if isinstance(component, nn.Module):
            check_module(component, name, refuse)
    _check_tokenizers(components, refuse)


def _check_tokenizers(components: dict[str, Any], refuse: Refusal) -> None:
    """A tokenizer has a vocabulary, of no more tokens than its text encoder's table has rows."""
    for name, tokenizer in components.items():
        if not name.startswith("tokenizer") or not hasattr(tokenizer, "get_vocab"):
            continue
        size = len(tokenizer.get_vocab())
        if size == 0:
            raise refuse(name, "its vocabulary is empty")
        encoder = components.get("text_encoder" + name.removeprefix("tokenizer"))
        rows = getattr(getattr(encoder, "config", None), "vocab_size", None)
        if isinstance(rows, int) and size > rows:
            raise refuse(
                name,
                f"has {size} tokens, more than the {rows} rows of its text encoder's table (vocab_size): it "
                "belongs to another model",
            )


def _mismatch(e: Exception) -> str | None:
    """A size-mismatch error of either library, as one line."""
    text = str(e)
    if "size mismatch" in text or "ignore_mismatched_sizes" in text or "mismatched" in text:
        return "its weights have another shape than its config.json gives them (a changed size field?)"
    return None


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:160]
