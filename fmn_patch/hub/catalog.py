"""The catalog of community patches: Hub models tagged ``fmn-patch``, searched by text, base and category.

Each patch's concepts, base, method and rank are read from its safetensors header on the Hub with byte-range
requests (``HfApi.parse_safetensors_file_metadata``): nothing is downloaded. A repo whose header cannot be read
(gated, private, not a patch) is still listed, with what its card's tags say.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx2
from huggingface_hub import HfApi, is_offline_mode
from huggingface_hub.errors import HfHubHTTPError, SafetensorsParsingError

from .. import values
from ..errors import PatchFileError
from ..format.category import CATEGORIES, category_of
from ..format.header import NAMESPACE, PatchConcept
from ..format.schema import check_strings, info_from_header
from ..text import printable
from .card import PROJECT_TAG, WEIGHT_NAME, category_tag
from .errors import OfflineError, hub_errors
from .refs import HubRef


class SkippedPatchWarning(UserWarning):
    """A community repo whose patch header is malformed; ``search`` leaves it out and says why."""


@dataclass(frozen=True)
class HubPatch:
    """A community patch as listed by ``search``."""

    repo_id: str
    filename: str | None  # its patch file (None: the repo holds no .safetensors file)
    title: str
    concepts: tuple[PatchConcept, ...]
    categories: tuple[str, ...]
    base_model: str | None
    method: str | None
    rank: int | None
    downloads: int
    likes: int
    last_modified: str | None
    from_header: bool  # concepts, base, method, rank read from the file's header on the Hub (not downloaded)

    @property
    def ref(self) -> HubRef:
        return HubRef(self.repo_id, None if self.filename == WEIGHT_NAME else self.filename)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ref": str(self.ref)}


def search(
    text: str | None = None,
    *,
    base: str | None = None,
    categories: Sequence[str] = (),
    limit: int = 20,
    scan: int = 200,
    token: str | None = None,
) -> list[HubPatch]:
    """Community patches (Hub models tagged ``fmn-patch``), most downloaded first, read from their headers remotely.

    ``text`` matches the repo id, title or a concept name; ``base`` the base model (``org/name`` or ``name``);
    ``categories`` are all required (``identity``, ``object``, ``style``, ``nsfw``, ``other``). At most ``scan`` tagged
    repos are looked at and ``limit`` returned.
    """
    values.whole(limit, "limit", 1, 1000, example=20)
    wanted = [category_of(c) for c in categories]
    if is_offline_mode():
        raise OfflineError(
            "searching the Hub needs the network and HF_HUB_OFFLINE is set; unset it (pulled patches still work "
            "offline by reference)"
        )
    api = HfApi(token=token)
    found: list[HubPatch] = []
    with hub_errors("the Hub search"):
        models = api.list_models(
            filter=[PROJECT_TAG, *(category_tag(c) for c in wanted)],
            sort="downloads",
            limit=scan,
            expand=["siblings", "cardData", "tags", "downloads", "likes", "lastModified", "sha"],
        )
        for model in models:
            try:
                entry = _describe(api, model)
            except PatchFileError as e:
                warnings.warn(f"skipped {printable(model.id, 100)}: {e}", SkippedPatchWarning, stacklevel=2)
                continue
            if _matches(entry, text, base):
                found.append(entry)
            if len(found) >= limit:
                break
    return found


def _describe(api: HfApi, model: Any) -> HubPatch:
    names = sorted(s.rfilename for s in model.siblings or [] if s.rfilename.endswith(".safetensors"))
    filename = WEIGHT_NAME if WEIGHT_NAME in names else (names[0] if len(names) == 1 else None)
    tags = list(model.tags or [])
    card_base = getattr(model.card_data, "base_model", None) if model.card_data else None
    header: dict[str, str] = {}
    if filename is not None:
        try:
            raw = api.parse_safetensors_file_metadata(model.id, filename, revision=model.sha).metadata
        except (HfHubHTTPError, httpx2.TransportError):
            raw = {}  # gated or private: list it with what the card says
        except (SafetensorsParsingError, TypeError, ValueError, AttributeError, RecursionError) as e:
            raise PatchFileError(f"{filename} is not a readable safetensors file ({type(e).__name__})") from e
        if not isinstance(raw, dict):
            raise PatchFileError(f"{filename}: its header metadata is not a JSON object")
        header = check_strings(raw)
    info, rank = None, header.get(f"{NAMESPACE}.rank", "")
    if f"{NAMESPACE}.format_version" in header:
        info = info_from_header(header)  # PatchFileError: skipped with a warning
    return HubPatch(
        repo_id=model.id,
        filename=filename,
        title=info.title if info else model.id,
        concepts=info.concepts if info else (),
        categories=tuple(c for c in CATEGORIES if category_tag(c) in tags),
        base_model=(card_base if isinstance(card_base, str) else None) or (info.base_model if info else None),
        method=info.method if info else None,
        rank=int(rank) if info and rank.isascii() and rank.isdigit() else None,
        downloads=int(model.downloads or 0),
        likes=int(model.likes or 0),
        last_modified=model.last_modified.isoformat() if model.last_modified else None,
        from_header=info is not None,
    )


def _matches(entry: HubPatch, text: str | None, base: str | None) -> bool:
    if text:
        needle = text.lower()
        haystack = [entry.repo_id, entry.title, *(c.name for c in entry.concepts)]
        if not any(needle in h.lower() for h in haystack):
            return False
    if base:
        model = (entry.base_model or "").lower()
        if base.lower() not in (model, model.rsplit("/", 1)[-1]):
            return False
    return True
