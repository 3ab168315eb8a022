"""Errors that teach: every message names the bad value and the fix.

The library raises only ``FmnPatchError`` subclasses for user mistakes; the CLI prints their message as one line
and exits with code 2. Any other exception is a bug.
"""

from __future__ import annotations


class FmnPatchError(Exception):
    """A user-facing error whose message says what was wrong and how to fix it."""


class PatchFileError(FmnPatchError):
    """A file that is not a valid fmn-patch ``.safetensors`` patch (refused before anything is applied)."""


class BaseFolderError(FmnPatchError):
    """A base folder that is not a loadable pipeline: a component missing or damaged (refused before any work)."""


class BaseMismatchError(FmnPatchError):
    """A patch that does not fit the base model it is applied to."""


class UnknownNameError(FmnPatchError):
    """A name (concept, bench, judge, base, family, category) that no registry or data file knows."""


class BenchError(FmnPatchError):
    """A ConceptBench file or a concept that does not fit it."""


class _NotBuiltError(FmnPatchError):
    """Deprecated: nothing raises it since the last planned command was built; removed in the next release."""


class OutputError(FmnPatchError):
    """An output that cannot be written (a bad path, a full disk, a read-only folder); nothing was written."""


class StorageError(OutputError):
    """The storage refused a write (full, past the file-size limit, read-only, no permission): every further write
    there fails the same way, so a batch stops at the first one."""


class OutputExistsError(OutputError):
    """The output exists and ``--overwrite`` was not given (or another process published it meanwhile)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C after a run had written some of its outputs: the message says which, and how to go on (exit 130)."""


def __getattr__(name: str) -> type[FmnPatchError]:
    """``NotBuiltError``, kept one release for code that catches it, with a ``DeprecationWarning``."""
    if name == "NotBuiltError":
        import warnings

        warnings.warn(
            "fmn_patch.errors.NotBuiltError is deprecated: nothing raises it; stop catching it (removed next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return _NotBuiltError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
