"""Patches on the Hugging Face Hub: references, pull and push (with a model card); ``catalog`` searches.

A Hub reference works wherever a patch path does (``fmnpatch apply``, ``merge``, ``inspect``, ``eval``, ``export``,
``attack``), in huggingface_hub's own syntax (``refs``), which ``HfFileSystem`` and the ``hf`` CLI read too::

    hf://ORG/NAME[@REVISION][/PATH/IN/REPO.safetensors]

    hf://acme/forget-elon                      the repo's patch, branch main
    hf://acme/forget-elon@v1                   a branch or tag
    hf://acme/forget-elon@3f2a9c1e...          a commit: pinned (``pull`` prints the pinned form)
    hf://acme/celebs/elon.safetensors          a named file, in a repo that holds several
    hf://acme/celebs@v1/elon.safetensors       both

Without a file name the repo's ``pytorch_lora_weights.safetensors`` is used (diffusers' ``LORA_WEIGHT_NAME_SAFE``,
the name ``push`` gives), or else its only patch file (a ``.kohya.safetensors`` export beside it does not count).
``fmnpatch pull`` also takes the bare ``ORG/NAME[@REVISION]``.

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

import safetensors.torch
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, get_token, hf_hub_download, is_offline_mode
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from ..errors import FmnPatchError, PatchFileError
from ..families.export import has_kohya_form, to_kohya
from ..files import atomic_write, check_output
from ..format.header import read_header
from ..format.kohya import SUFFIX as KOHYA_SUFFIX
from ..format.kohya import kohya_path
from ..format.patch import Patch
from ..progress import phase
from ..text import printable
from .card import WEIGHT_NAME, hub_model_id, local_paths, model_card
from .errors import LOGIN, FileNotInRepoError, HubError, NotLoggedInError, OfflineError, hub_errors
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
            local = hf_hub_download(
                ref.repo_id,
                filename,
                revision=ref.revision,
                cache_dir=cache_dir,
                token=token,
                force_download=force_download,
            )
        except ValueError as e:  # force_download wraps the Hub's error: "Force download failed due to ..."
            if force_download and isinstance(e.__cause__, Exception):
                raise e.__cause__ from None
            raise
        # the commit from huggingface_hub itself (a dry run on the cache just written), not from folder names
        found = hf_hub_download(
            ref.repo_id,
            filename,
            revision=ref.revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=True,
            dry_run=True,
        )
        return Path(local), filename, found.commit_hash

    if force_download and is_offline_mode():
        raise OfflineError("--force-download needs the network and HF_HUB_OFFLINE is set; unset one of them")

    with hub_errors(str(ref)), phase(f"downloading {ref}"):
        try:
            return download(ref.filename or WEIGHT_NAME)
        except LocalEntryNotFoundError:
            raise
        except EntryNotFoundError:
            names = _patch_files(HfApi(token=token), ref)
            native = [
                n for n in names if not n.endswith(KOHYA_SUFFIX)
            ]  # a patch's kohya export is not a second patch
            if ref.filename is None and len(native) == 1:
                return download(native[0])
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
        f"{where} has no file {asked!r} (it has {has}); name one, e.g. {HubRef(ref.repo_id, names[0], ref.revision)}"
    )


# --------------------------------------------------------------------------------------------------- push
@dataclass(frozen=True)
class Pushed:
    """Where a pushed patch now lives."""

    repo_id: str
    filename: str
    revision: str
    commit: str
    url: str  # the commit's page
    kohya_filename: str | None = None  # its kohya export beside it, for ComfyUI and AUTOMATIC1111

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
    force: bool = False,
) -> Pushed:
    """Upload a patch, its kohya export and a model card made from its header, in one commit (the repo is created
    if needed).

    ``repo_id`` is ``ORG/NAME``, optionally with a revision and a file name as in a reference
    (``ORG/NAME@dev/elon.safetensors``); the file is diffusers' ``pytorch_lora_weights.safetensors`` by default and
    its kohya export (for ComfyUI and AUTOMATIC1111) goes beside it as ``NAME.kohya.safetensors`` where the family
    has one (not SD3, whose UIs read the native file); the card says which file is for which tool. ``grid`` is a
    before/after PNG (e.g. from ``fmnpatch apply --prompt``) shown in the card. ``base_model`` overrides the
    header's base in the card's front matter (for a patch made on a local copy of a Hub model). A header that
    names an absolute local path is refused unless ``force``.
    """
    ref = as_ref(repo_id)
    if revision and ref.revision and revision != ref.revision:
        raise HubError(f"two revisions given ({ref.revision!r} in {repo_id!r} and {revision!r}); give one")
    revision = revision or ref.revision or "main"
    filename = ref.filename or WEIGHT_NAME
    patch = Patch.load(path, require_hash=True)  # refuse, before any network call, what pull would refuse
    header = read_header(path)
    if "ss_network_module" in header:
        raise FmnPatchError(
            f"{path} is a kohya export; push the patch it was made from (its kohya export is uploaded beside it)"
        )
    leaks = local_paths(header)
    if leaks and not force:
        raise HubError(
            f"the header of {path} names local paths ({', '.join(printable(p, 80) for p in leaks[:3])}) that would "
            "be published; remake the patch (headers now name a local base by its folder name and weight hash), "
            "or pass --force to publish them"
        )
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
    card_title = header.get("modelspec.title") or patch.header()["modelspec.title"]
    kohya_file = _kohya_file(patch, filename)
    card = _card(patch, ref, filename, size, grid is not None, base_model, license)
    operations = [CommitOperationAdd(path_in_repo=filename, path_or_fileobj=str(path))]
    if (
        kohya_file is not None
    ):  # the file ComfyUI and AUTOMATIC1111 read (SD3 has none: its UIs read the native one)
        kohya_tensors, kohya_header = to_kohya(patch)
        kohya_bytes = safetensors.torch.save(kohya_tensors, metadata=kohya_header)
        operations.append(CommitOperationAdd(path_in_repo=kohya_file, path_or_fileobj=kohya_bytes))
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    if grid is not None:
        operations.append(CommitOperationAdd(path_in_repo=GRID_NAME, path_or_fileobj=str(grid)))
    with (
        hub_errors(ref.repo_id, writing=True),
        phase(f"uploading to {ref.repo_id}", len(operations), "files") as p,
    ):
        api.create_repo(ref.repo_id, private=private or None, exist_ok=True)
        if revision != "main":
            api.create_branch(ref.repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            ref.repo_id,
            operations,
            commit_message=commit_message or f"fmn-patch: {card_title}",
            revision=revision,
        )
        p.advance(len(operations))
    return Pushed(ref.repo_id, filename, revision, commit.oid, commit.commit_url, kohya_file)


def card_preview(
    path: str | os.PathLike[str],
    repo_id: str,
    *,
    grid: bool = False,
    base_model: str | None = None,
    license: str | None = None,
) -> str:
    """The model card ``push`` would upload with the patch at ``path`` to ``repo_id`` (``grid``: with a
    before/after image), as Markdown; nothing is sent."""
    ref = as_ref(repo_id)
    patch = Patch.load(path, require_hash=True)
    size = Path(path).stat().st_size
    return str(_card(patch, ref, ref.filename or WEIGHT_NAME, size, grid, base_model, license))


def _kohya_file(patch: Patch, filename: str) -> str | None:
    """The kohya export's name in the repo, beside ``filename``; None where the family has no kohya form."""
    return kohya_path(filename).as_posix() if has_kohya_form(patch) else None


def _card(
    patch: Patch,
    ref: HubRef,
    filename: str,
    size: int,
    grid: bool,
    base_model: str | None,
    license: str | None,
) -> ModelCard:
    return model_card(
        patch,
        repo_id=ref.repo_id,
        filename=filename,
        size_bytes=size,
        grid=GRID_NAME if grid else None,
        base_model=base_model,
        license=license,
        kohya_filename=_kohya_file(patch, filename),
    )
