"""Hub references to patches: ``hf://ORG/NAME[/PATH/IN/REPO.safetensors][@REVISION]``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import SCHEME, HubError

_REF = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?P<file>(?:/[^@]+)?)(?:@(?P<rev>[^@\s]+))?$")


@dataclass(frozen=True)
class HubRef:
    """A patch on the Hub: repo, file in it (None: the default or only patch) and revision (None: main)."""

    repo_id: str
    filename: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        file = f"/{self.filename}" if self.filename else ""
        return f"{SCHEME}{self.repo_id}{file}" + (f"@{self.revision}" if self.revision else "")

    @classmethod
    def parse(cls, text: str | os.PathLike[str]) -> HubRef:
        """Read ``hf://ORG/NAME[/FILE.safetensors][@REVISION]``; the ``hf://`` may be left out."""
        raw = os.fspath(text).strip()
        body = raw
        for prefix in (SCHEME, "hf:/"):  # "hf:/" is what a pathlib.Path makes of "hf://"
            if body.startswith(prefix):
                body = body[len(prefix) :]
                break
        m = _REF.match(body)
        if m is None:
            raise HubError(
                f"{raw!r} is not a Hub reference; write hf://ORG/NAME[/FILE.safetensors][@REVISION], "
                "e.g. hf://acme/forget-elon@main"
            )
        filename = m["file"].lstrip("/") or None
        if filename is not None and not filename.endswith(".safetensors"):
            raise HubError(
                f"{raw!r}: {filename!r} is not a .safetensors file; name the patch file in the repo, "
                "e.g. hf://ORG/NAME/forget.safetensors"
            )
        return cls(m["repo"], filename, m["rev"])


def is_hub_ref(text: str | os.PathLike[str]) -> bool:
    """Whether a patch argument is a Hub reference (``hf://...``) rather than a local path."""
    return os.fspath(text).startswith(("hf://", "hf:/"))


def as_ref(ref: HubRef | str | os.PathLike[str]) -> HubRef:
    return ref if isinstance(ref, HubRef) else HubRef.parse(ref)
