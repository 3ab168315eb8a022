"""Hub errors: huggingface_hub's exceptions turned into one-line ``HubError``s that name the fix."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import httpx2
from huggingface_hub import constants, is_offline_mode
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import FmnPatchError
from ..text import printable

SCHEME: Final = "hf://"
FORM: Final = "hf://ORG/NAME[@REVISION][/FILE.safetensors]"
LOGIN: Final = (
    "log in with `hf auth login` (`huggingface-cli login` in older releases) or set HF_TOKEN to a token from "
    "https://huggingface.co/settings/tokens"
)


class HubError(FmnPatchError):
    """A Hub operation that failed; the message says why and what to do."""


class RepoNotFoundError(HubError):
    """No such repo, or a private one the caller cannot see."""


class FileNotInRepoError(HubError):
    """The repo (at that revision) has no such patch file."""


class NotLoggedInError(HubError):
    """A write needs a token and there is none, or the Hub refused it."""


class OfflineError(HubError):
    """Offline (HF_HUB_OFFLINE=1, or no network) and the file is not in the local cache."""


@contextmanager
def quiet_hub() -> Iterator[None]:
    """huggingface_hub's own log lines (``'[Errno 111] Connection refused' thrown while requesting HEAD ...``,
    ``Retrying in 1s``) kept off stderr while the calls inside run: what went wrong becomes the one error line."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def hub_errors(target: str, *, writing: bool = False) -> Iterator[None]:
    """Turn huggingface_hub's exceptions raised inside into one-line ``HubError``s that name the fix (and keep its
    log lines off stderr meanwhile)."""
    try:
        with quiet_hub():
            yield
    except GatedRepoError as e:
        raise HubError(
            f"{target} is gated: accept its conditions at https://huggingface.co/{target.removeprefix(SCHEME)} "
            f"and {LOGIN}"
        ) from e
    except RepositoryNotFoundError as e:
        raise RepoNotFoundError(
            f"{target}: no such repo on the Hub, or it is private and you are not logged in; check the id "
            f"(`fmnpatch search` lists community patches), or {LOGIN}"
        ) from e
    except RevisionNotFoundError as e:
        raise HubError(
            f"{target}: no such revision in the repo; give a branch, tag or commit it has (default: main)"
        ) from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        if is_offline_mode():
            raise OfflineError(
                f"{target} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; pull it once online "
                f"(`fmnpatch pull {target}`), or unset HF_HUB_OFFLINE"
            ) from e
        raise OfflineError(
            f"cannot reach the Hub ({constants.ENDPOINT}) and {target} is not in the local cache; check the "
            "connection (or HF_ENDPOINT) and try again"
        ) from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise NotLoggedInError(f"the Hub refused the token for {target} (401): {LOGIN}") from e
        if status == 403 and writing:
            raise NotLoggedInError(
                f"your token may not write to {target} (403): use a token with write access to that namespace, "
                "or push to your own (YOUR_NAME/REPO)"
            ) from e
        raise HubError(
            f"the Hub answered {status} for {target}: {e.server_message or 'no details'}; try again later"
        ) from e
    except HFValidationError as e:
        raise HubError(f"{target}: {e}; a repo id is ORG/NAME of letters, digits, '-', '_' and '.'") from e
    except ValueError as e:
        if not _raised_by_hub(e):
            raise
        reason = " ".join(str(e).split())
        raise HubError(f"{target}: {printable(reason, 300)}; check the reference ({FORM})") from e
    except httpx2.TransportError as e:
        raise HubError(
            f"cannot reach the Hub ({constants.ENDPOINT}) for {target}: {e}; check the connection (or HF_ENDPOINT)"
        ) from e


def _raised_by_hub(e: BaseException) -> bool:
    """Whether huggingface_hub itself raised ``e`` (its checks raise plain ``ValueError``s: a file name with a
    ``..`` segment), not code of ours or another library's."""
    tb = e.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and f"{os.sep}huggingface_hub{os.sep}" in last
