"""Patches on the Hugging Face Hub: references, pull and push (with a model card); ``catalog`` searches.

A Hub reference works wherever a patch path does (``fmnpatch apply``, ``merge``, ``inspect``, ``eval``, ``export``)::

    hf://ORG/NAME[/PATH/IN/REPO.safetensors][@REVISION]

    hf://acme/forget-elon                   the repo's patch, branch main
    hf://acme/forget-elon@v1                a branch or tag
    hf://acme/forget-elon@3f2a9c1e...       a commit: pinned (``pull`` prints the pinned form)
    hf://acme/celebs/elon.safetensors       a named file, in a repo that holds several

Without a file name the repo's ``pytorch_lora_weights.safetensors`` is used (diffusers' default ``weight_name``,
the name ``push`` gives), or else its only ``.safetensors`` file. ``fmnpatch pull`` also takes the bare
``ORG/NAME[@REVISION]``.

Pulled files live in the standard huggingface_hub cache, so with ``HF_HUB_OFFLINE=1`` a reference pulled before
resolves without the network (name the file in the reference if it is not the default). A pulled file is checked
like a local one before anything uses it: safetensors only (nothing is ever unpickled), and the tensor hash in its
header must match its tensors. Only huggingface_hub's public API is used; its exceptions become ``HubError``
subclasses whose one-line message names the fix.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from huggingface_hub import CommitOperationAdd, HfApi, get_token, hf_hub_download, is_offline_mode
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from ..errors import FmnPatchError, PatchFileError
from ..files import atomic_write, check_output
from ..format.patch import Patch
from .card import WEIGHT_NAME, hub_model_id, model_card
from .errors import LOGIN, SCHEME, FileNotInRepoError, HubError, NotLoggedInError, OfflineError, hub_errors
from .refs import HubRef, as_ref

GRID_NAME: Final = "fmnpatch-grid.png"  # the before/after image beside the patch in the repo


# --------------------------------------------------------------------------------------------------- pull
@dataclass(frozen=True)
class Pulled:
    """A patch fetched from the Hub and validated."""

    ref: HubRef  # as asked for
    filename: str  # the file in the repo
    commit: str | None  # the commit it came from
    path: Path  # where it is on disk: the copy at ``output``, or the cached file
    patch: Patch

    @property
    def pinned(self) -> HubRef:
        """The reference pinned to the commit it came from: the same bytes forever."""
        return HubRef(self.ref.repo_id, self.filename, self.commit or self.ref.revision)


def resolve(
    ref: HubRef | str | os.PathLike[str],
    *,
    cache_dir: Path | None = None,
    token: str | None = None,
    force_download: bool = False,
) -> Path:
    """The local file of a Hub reference: from the cache, downloaded first when online and needed."""
    if cache_dir is not None:
        check_output(cache_dir, overwrite=True, folder=True, what="--cache-dir")
    return _fetch(as_ref(ref), cache_dir=cache_dir, token=token, force_download=force_download)[0]


def pull(
    ref: HubRef | str | os.PathLike[str],
    output: Path | None = None,
    *,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    token: str | None = None,
    force_download: bool = False,
) -> Pulled:
    """Fetch a patch (or take it from the cache), validate it, and copy it to ``output`` when given.

    ``output`` is a ``.safetensors`` path, or else a folder (created if needed; the repo's file name is kept).
    Refuses a file that is not a valid patch, or whose tensors do not match its header's hash, before writing.
    """
    ref = as_ref(ref)
    if cache_dir is not None:
        check_output(cache_dir, overwrite=True, folder=True, what="--cache-dir")
    if output is not None:  # refused before any download
        output = Path(output)
        check_output(output, overwrite=True, folder=output.suffix != ".safetensors", what="--output")
        if output.suffix == ".safetensors":
            check_output(output, overwrite=overwrite, what="--output")
    cached, filename, commit = _fetch(ref, cache_dir=cache_dir, token=token, force_download=force_download)
    try:
        patch = Patch.load(cached, require_hash=True)  # "verified" means a hash was checked
    except PatchFileError as e:
        raise PatchFileError(f"{ref} is refused: {e}") from e
    path = cached
    if output is not None:
        target = output if output.suffix == ".safetensors" else output / Path(filename).name
        path = atomic_write(target, lambda tmp: shutil.copyfile(cached, tmp), overwrite=overwrite)
    return Pulled(ref, filename, commit, path, patch)


def _fetch(
    ref: HubRef, *, cache_dir: Path | None, token: str | None, force_download: bool
) -> tuple[Path, str, str | None]:
    def download(filename: str) -> tuple[Path, str, str | None]:
        try:
            local = Path(
                hf_hub_download(
                    ref.repo_id,
                    filename,
                    revision=ref.revision,
                    cache_dir=cache_dir,
                    token=token,
                    force_download=force_download,
                )
            )
        except ValueError as e:  # force_download wraps the Hub's error: "Force download failed due to ..."
            if force_download and isinstance(e.__cause__, Exception):
                raise e.__cause__ from None
            raise
        return local, filename, _commit_of(local, filename)

    if force_download and is_offline_mode():
        raise OfflineError("--force-download needs the network and HF_HUB_OFFLINE is set; unset one of them")

    with hub_errors(str(ref)):
        try:
            return download(ref.filename or WEIGHT_NAME)
        except LocalEntryNotFoundError:
            raise
        except EntryNotFoundError:
            names = _patch_files(HfApi(token=token), ref)
            if ref.filename is None and len(names) == 1:
                return download(names[0])
            raise _missing(ref, names) from None


def _patch_files(api: HfApi, ref: HubRef) -> list[str]:
    return sorted(
        f for f in api.list_repo_files(ref.repo_id, revision=ref.revision) if f.endswith(".safetensors")
    )


def _missing(ref: HubRef, names: Sequence[str]) -> FileNotInRepoError:
    where = ref.repo_id + (f"@{ref.revision}" if ref.revision else "")
    if not names:
        return FileNotInRepoError(
            f"{where} holds no .safetensors patch; check the repo id (`fmnpatch search` lists patches)"
        )
    asked = ref.filename or WEIGHT_NAME
    has = ", ".join(names)
    return FileNotInRepoError(
        f"{where} has no file {asked!r} (it has {has}); name one, e.g. {SCHEME}{ref.repo_id}/{names[0]}"
    )


def _commit_of(local: Path, filename: str) -> str | None:
    """The commit hash of a file in the cache: ``.../snapshots/<commit>/<filename>``."""
    parts = local.parts
    depth = len(Path(filename).parts)
    if len(parts) > depth + 1 and parts[-depth - 2] == "snapshots":
        return parts[-depth - 1]
    return None


# --------------------------------------------------------------------------------------------------- push
@dataclass(frozen=True)
class Pushed:
    """Where a pushed patch now lives."""

    repo_id: str
    filename: str
    revision: str
    commit: str
    url: str  # the commit's page

    @property
    def ref(self) -> HubRef:
        return HubRef(
            self.repo_id,
            None if self.filename == WEIGHT_NAME else self.filename,
            None if self.revision == "main" else self.revision,
        )

    @property
    def pinned(self) -> HubRef:
        return HubRef(self.repo_id, self.filename, self.commit)


def push(
    path: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    grid: Path | None = None,
    base_model: str | None = None,
    license: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> Pushed:
    """Upload a patch and a model card made from its header, in one commit (the repo is created if needed).

    ``repo_id`` is ``ORG/NAME``, optionally with a file name and revision as in a reference
    (``ORG/NAME/elon.safetensors@dev``); the file is ``pytorch_lora_weights.safetensors`` by default. ``grid`` is a
    before/after PNG (e.g. from ``fmnpatch apply --prompt``) shown in the card. ``base_model`` overrides the
    header's base in the card's front matter (for a patch made on a local copy of a Hub model).
    """
    ref = as_ref(repo_id)
    if revision and ref.revision and revision != ref.revision:
        raise HubError(f"two revisions given ({ref.revision!r} in {repo_id!r} and {revision!r}); give one")
    revision = revision or ref.revision or "main"
    filename = ref.filename or WEIGHT_NAME
    patch = Patch.load(path, require_hash=True)  # refuse, before any network call, what pull would refuse
    size = Path(path).stat().st_size
    if grid is not None and not Path(grid).is_file():
        raise FmnPatchError(
            f"grid image {str(grid)!r} does not exist; make one with `fmnpatch apply ... --prompt`"
        )
    if base_model is not None and hub_model_id(base_model) is None:
        raise FmnPatchError(f"--base-model {base_model!r} is not a Hub model id; write ORG/NAME")
    if is_offline_mode():
        raise OfflineError("pushing needs the network and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE")
    token = token or get_token()
    if token is None:
        raise NotLoggedInError(f"pushing to {ref.repo_id} needs a Hugging Face login: {LOGIN}")
    api = HfApi(token=token)
    card_title = patch.header()["modelspec.title"]
    card = model_card(
        patch,
        repo_id=ref.repo_id,
        filename=filename,
        size_bytes=size,
        grid=GRID_NAME if grid is not None else None,
        base_model=base_model,
        license=license,
    )
    operations = [
        CommitOperationAdd(path_in_repo=filename, path_or_fileobj=str(path)),
        CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()),
    ]
    if grid is not None:
        operations.append(CommitOperationAdd(path_in_repo=GRID_NAME, path_or_fileobj=str(grid)))
    with hub_errors(ref.repo_id, writing=True):
        api.create_repo(ref.repo_id, private=private or None, exist_ok=True)
        if revision != "main":
            api.create_branch(ref.repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            ref.repo_id,
            operations,
            commit_message=commit_message or f"fmn-patch: {card_title}",
            revision=revision,
        )
    return Pushed(ref.repo_id, filename, revision, commit.oid, commit.commit_url)
