"""huggingface_hub and HTTP-client exceptions mapped to one-line DownloadError messages."""

from __future__ import annotations

import importlib

from irforge.errors import DownloadError
from irforge.stages.hub.target import HubTarget

TOKEN_HINT = "pass a token with --token or HF_TOKEN (or run `hf auth login`)"


def transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level failures of the HTTP client huggingface_hub uses (httpx2 since 2.0)."""
    classes: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            classes.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(classes)


def offline_error(target: HubTarget) -> DownloadError:
    place = target.local_dir if target.local_dir is not None else "the local cache"
    return DownloadError(
        f"{target.where} is not in {place} and HF_HUB_OFFLINE=1 is set (unset it to download)"
    )


def unreachable_error(target: HubTarget, error: BaseException) -> DownloadError:
    response = getattr(error, "response", None)
    if response is not None:  # the Hub answered, with a server error
        return DownloadError(
            f"{target.endpoint} is failing (HTTP {response.status_code}): try again later, or "
            "set HF_HUB_OFFLINE=1 to use the cache"
        )
    reason = " ".join(str(error).split()) or type(error).__name__
    return DownloadError(
        f"cannot reach {target.endpoint}: {reason}; set HF_HUB_OFFLINE=1 to use the cache"
    )


def _has_token(token: str | None) -> bool:
    if token:
        return True
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:  # a broken token source is no reason to hide the real error
        return False


def _cause(error: BaseException, classes: tuple[type[BaseException], ...]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, classes):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def hub_error(
    error: BaseException, target: HubTarget, *, token: str | None
) -> DownloadError | None:
    """A DownloadError with an actionable message for `error`, or None if it is not a Hub error.

    Args:
        error: what huggingface_hub (or its HTTP client) raised.
        target: the repo, revision, endpoint and folders of the download.
        token: the token passed explicitly, if any.

    Returns:
        The mapped error, or None for anything unexpected (left to surface as a bug).
    """
    from huggingface_hub import constants
    from huggingface_hub import errors as hf

    repo, url = target.repo_id, f"{target.endpoint}/{target.repo_id}"
    if isinstance(error, hf.GatedRepoError):
        if _has_token(token):
            return DownloadError(
                f"{repo} is gated and the token has no access to it: request access at {url} "
                "(and wait for approval), or use a token of an account that has it"
            )
        return DownloadError(f"{repo} is gated: request access at {url} then {TOKEN_HINT}")
    if isinstance(error, hf.RevisionNotFoundError):
        return DownloadError(
            f"revision {target.revision!r} not found in {repo} (use a branch, tag or commit sha)"
        )
    if isinstance(error, hf.RepositoryNotFoundError):
        return DownloadError(
            f"{repo} not found on {target.endpoint} (check the id, or it is private: "
            "pass a token with --token or HF_TOKEN)"
        )
    if isinstance(error, hf.LocalEntryNotFoundError | hf.OfflineModeIsEnabled):
        if constants.is_offline_mode():
            return offline_error(target)
        cause = _cause(error, transport_errors())
        return unreachable_error(target, cause or error)
    if isinstance(error, hf.HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status == 401:
            return DownloadError(
                f"{target.endpoint} rejected the token (401 Unauthorized): {TOKEN_HINT}"
            )
        if status == 403:
            return DownloadError(
                f"access to {repo} is forbidden (403): the token lacks read access; request "
                f"access at {url} or use a token with read permission"
            )
        if status == 404:
            return DownloadError(f"{repo}: {error.response.url} not found (404); try again")
        if status >= 500:
            return unreachable_error(target, error)
        return DownloadError(
            f"{target.endpoint} answered HTTP {status} for {repo}; try again later"
        )
    transport = _cause(error, transport_errors())
    if transport is not None:
        return unreachable_error(target, transport)
    if isinstance(error, OSError) and "Consistency check failed" in str(error):
        return DownloadError(
            f"a file of {repo} arrived truncated ({str(error).splitlines()[0]}); run the "
            "download again"
        )
    return None
