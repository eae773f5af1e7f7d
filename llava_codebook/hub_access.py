"""What the commands check about their model, codebook and image arguments before loading anything.

Two failures used to cost a newcomer minutes: a local path that does not exist was taken for a Hub id (and reported
as a malformed one), and a Hub id without a network retried each file for half a minute before failing. Here a
command names its references first; `check_references` then

- refuses a path that does not exist as a missing folder or file (a value that starts with `.`, `/` or `~`, or that
  no Hub id could be), and a value that is neither a path nor a valid Hub id;
- asks the Hub endpoint once, with a short timeout and no retries, whether it answers, when some reference is a Hub
  id and offline mode is off. If it does not answer, either every reference is in the local Hub cache (the command
  then runs offline from it, as with `HF_HUB_OFFLINE=1`), or the command stops with one line that names the ids
  and the ways out.

Not shipped as remote code: only the command line uses it.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import get_session, validate_repo_id

PROBE_TIMEOUT_S = 5.0
OFFLINE_FIX = (
    "download it once where the Hub can be reached and rerun with HF_HUB_OFFLINE=1 (the cached copy is used), or "
    "pass a local folder instead"
)


class HubUnreachableError(OSError):
    """The Hugging Face Hub does not answer and a reference the command needs is not in the local cache."""


class MissingPathError(FileNotFoundError):
    """An argument that can only be a local path names nothing."""


@dataclass(frozen=True)
class Reference:
    """One model, codebook or dataset argument of a command.

    `option` names it in messages (`--base`); `filename` is a file the command reads first from a Hub repo (checked in
    the cache when the Hub is unreachable); `needs_hub` marks what only the Hub can do (an upload). A dataset id
    (`repo_type="dataset"`) is never judged cached: `datasets` keeps its own cache, which `HF_HUB_OFFLINE=1` uses.
    """

    value: str | os.PathLike | None
    option: str
    filename: str | None = "config.json"
    revision: str | None = None
    repo_type: str = "model"
    needs_hub: bool = False
    kind: str = "folder"  # what a local value must be, in messages
    local_only: bool = False  # a local file or folder argument (a .pt, image files): never a Hub id
    hub_only: bool = False  # a Hub repo to create or write to: never a local path


def is_local(value: str | os.PathLike) -> bool:
    return Path(value).expanduser().exists()


def _repo_id(value: str) -> str:
    """A reference without its `@revision` suffix (`org/name@v1`), as codebooks declare base models."""
    return value.partition("@")[0]


def check_path_or_hub_id(reference: Reference) -> bool:
    """True when `reference` is a Hub id, False when it is an existing local path; raises for anything else."""
    value, kind = str(reference.value), reference.kind
    if not reference.hub_only and is_local(value):
        return False
    if reference.local_only or (not reference.hub_only and value.startswith((".", "/", "~"))):
        raise MissingPathError(f"{reference.option} {value!r}: no such {kind}. Check the path.")
    try:
        validate_repo_id(_repo_id(value))
    except HFValidationError:
        if reference.hub_only:
            raise ValueError(f"{reference.option} {value!r} is not a Hub repo id (org/name).") from None
        raise MissingPathError(
            f"{reference.option} {value!r} is neither an existing local {kind} nor a Hub repo id (org/name): no such "
            f"{kind}. Check the path or the id."
        ) from None
    return True


def probe_hub(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the Hub endpoint answers at all (any HTTP status), else why not (one request, no retries)."""
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
    except Exception as err:  # noqa: BLE001 (the client's transport errors: refused, DNS, timeout, TLS; any version)
        return str(err) or type(err).__name__
    return None


def _cached(reference: Reference) -> bool:
    if reference.needs_hub or reference.repo_type != "model" or reference.filename is None:
        return False
    repo_id, _, pinned = str(reference.value).partition("@")  # codebooks declare base models as org/name@revision
    found = try_to_load_from_cache(
        repo_id, reference.filename, revision=reference.revision or pinned or None, repo_type=reference.repo_type
    )
    return isinstance(found, str)


def go_offline() -> None:
    """Offline mode for the rest of this process: huggingface_hub, transformers and datasets read the cache only."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def check_references(*references: Reference, fix: str = OFFLINE_FIX) -> None:
    """Check a command's path and Hub arguments before it loads anything (see the module docstring).

    `fix` says what to do when a Hub id is needed and the Hub cannot be reached; the message adds it after naming the
    endpoint, the reason and the ids.
    """
    hub = [ref for ref in references if ref.value is not None and check_path_or_hub_id(ref)]
    if not hub or constants.HF_HUB_OFFLINE:
        return
    reason = probe_hub()
    if reason is None:
        return
    missing = [ref for ref in hub if not _cached(ref)]
    if not missing:
        go_offline()
        return
    named = ", ".join(f"{ref.value} ({ref.option})" for ref in missing)
    cache_note = "" if all(ref.needs_hub for ref in missing) else " and it is not in the local Hub cache"
    raise HubUnreachableError(
        f"The Hugging Face Hub ({constants.ENDPOINT}) cannot be reached ({reason}) to read {named}{cache_note}. "
        f"Fix: {fix}."
    )
