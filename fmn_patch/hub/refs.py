"""Hub references to patches, in huggingface_hub's own URI syntax: ``hf://ORG/NAME[@REVISION][/FILE.safetensors]``.

Parsed by ``huggingface_hub.parse_hf_uri``, the parser ``HfFileSystem`` and the ``hf`` CLI use, so a reference
written for fmn-patch opens in those tools too. Without a file name the repo's default patch is meant (see
``transfer``). The form of fmn-patch 0.1, ``hf://ORG/NAME/FILE.safetensors@REVISION``, which those tools read as a
file named ``FILE.safetensors@REVISION``, is still read for one release, with a ``DeprecatedReferenceWarning``.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

from huggingface_hub import parse_hf_uri
from huggingface_hub.errors import HfUriError

from .errors import FORM, SCHEME, HubError

# the 0.1 form: a file path, then "@REVISION" at the very end
_OLD = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)/(?P<file>[^@]+\.safetensors)@(?P<rev>[^@/\s]+(?:/[^@\s]+)?)$")


class DeprecatedReferenceWarning(UserWarning):
    """A Hub reference in the form of fmn-patch 0.1 (``hf://ORG/NAME/FILE@REVISION``); read until the next release."""


@dataclass(frozen=True)
class HubRef:
    """A patch on the Hub: repo, file in it (None: the default or only patch) and revision (None: main)."""

    repo_id: str
    filename: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        file = f"/{self.filename}" if self.filename else ""
        return f"{SCHEME}{self.repo_id}{revision}{file}"

    @classmethod
    def parse(cls, text: str | os.PathLike[str]) -> HubRef:
        """Read ``hf://ORG/NAME[@REVISION][/FILE.safetensors]``; the ``hf://`` may be left out (``pull ORG/NAME``)."""
        raw = os.fspath(text).strip()
        body = raw
        for prefix in (SCHEME, "hf:/"):  # "hf:/" is what a pathlib.Path makes of "hf://"
            if body.startswith(prefix):
                body = body[len(prefix) :]
                raw = SCHEME + body  # shown as typed, not as a Path argument rewrote it
                break
        if (old := _OLD.match(body)) is not None:
            new = cls(old["repo"], old["file"], old["rev"])
            warnings.warn(
                f"{raw!r} is the old reference form; write {new} (huggingface_hub's syntax, which HfFileSystem and "
                "the hf CLI read too); the old form is read until the next release",
                DeprecatedReferenceWarning,
                stacklevel=2,
            )
            return new
        try:
            uri = parse_hf_uri(SCHEME + body)
        except HfUriError as e:
            raise HubError(
                f"{raw!r} is not a Hub reference; write {FORM}, e.g. hf://acme/forget-elon@main"
            ) from e
        if uri.type != "model":
            raise HubError(f"{raw!r} names a {uri.type} repo; patches live in model repos: write {FORM}")
        filename = uri.path_in_repo or None
        if filename is not None and any(part in (".", "..") for part in re.split(r"[/\\]", filename)):
            raise HubError(
                f"{raw!r}: the file path {filename!r} holds a '.' or '..' segment; name the file by its path in "
                f"the repo, e.g. hf://{uri.id}/forget.safetensors (write {FORM})"
            )
        if filename is not None and not filename.endswith(".safetensors"):
            raise HubError(
                f"{raw!r}: {filename!r} is not a .safetensors file; name the patch file in the repo, "
                f"e.g. hf://{uri.id}/forget.safetensors (write {FORM})"
            )
        return cls(uri.id, filename, uri.revision)


def is_hub_ref(text: str | os.PathLike[str]) -> bool:
    """Whether a patch argument is a Hub reference (``hf://...``) rather than a local path."""
    return os.fspath(text).startswith(("hf://", "hf:/"))


def as_ref(ref: HubRef | str | os.PathLike[str]) -> HubRef:
    return ref if isinstance(ref, HubRef) else HubRef.parse(ref)
