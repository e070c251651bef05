"""download(): fetch a model's weights, config and tokenizer from the Hugging Face Hub."""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irforge import __version__
from irforge.errors import DownloadError
from irforge.facts.presets import TINY_ALIAS
from irforge.formats.atomic import AtomicFile
from irforge.stages.hub.hub_errors import (
    hub_error,
    offline_error,
    transport_errors,
    unreachable_error,
)
from irforge.stages.hub.registry import REGISTRY, lookup
from irforge.stages.hub.select import FORMATS, select_files
from irforge.stages.hub.target import HubTarget

MANIFEST_NAME = "irforge-download.json"
MANIFEST_FORMAT = "irforge-download"
MANIFEST_VERSION = 1

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class DownloadedFile:
    name: str  # path inside the repo, "/"-separated
    size: int


@dataclass(frozen=True)
class DownloadResult:
    """Where a download landed and exactly what it holds."""

    path: Path  # the snapshot folder in the HF cache, or local_dir
    repo_id: str
    revision: str  # the resolved commit sha
    requested_revision: str | None
    files: tuple[DownloadedFile, ...]
    from_cache_only: bool = False  # the Hub was not contacted (offline or unreachable)
    notes: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def resolve_model(model: str, format: str = "safetensors") -> str:
    """The HF repo id to download for a registry alias or a repo id.

    Args:
        model: an alias from `irforge models` (case-insensitive) or "owner/name".
        format: "gguf" maps an alias to its registered GGUF conversion.

    Returns:
        The repo id.

    Raises:
        DownloadError: for the built-in tiny model, an unknown alias, or an alias with no
            GGUF repo when format is gguf.
    """
    entry = lookup(model)
    if entry is not None and entry.alias == TINY_ALIAS:
        raise DownloadError(
            "tiny is built into irforge and needs no download: `irforge build tiny` creates it"
        )
    if entry is not None and entry.repo_id is not None and model.strip().lower() == entry.alias:
        if format == "gguf":
            if entry.gguf_repo is None:
                raise DownloadError(
                    f"no GGUF repo is registered for {entry.alias}: pass the repo id of a GGUF "
                    "conversion, or drop --format gguf for the safetensors weights"
                )
            return entry.gguf_repo
        return entry.repo_id
    if not _REPO_ID.match(model):
        raise DownloadError(
            f"unknown model {model!r}: pass an HF repo id (owner/name) or one of "
            f"{', '.join(REGISTRY)} (see `irforge models`)"
        )
    return model


def download(
    model: str,
    *,
    revision: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    format: str = "safetensors",
    quant: str | None = None,
    local_dir: Path | None = None,
    token: str | None = None,
    allow_pickle: bool = False,
    tqdm_class: Any = None,
) -> DownloadResult:
    """Download what the pipeline needs from a Hub model repo, pinned to one commit.

    Files go to the shared HF cache (or `local_dir`) through huggingface_hub, which
    retries a dropped connection from the last byte received and skips files already
    there. `HF_HUB_OFFLINE=1` (or an unreachable Hub) serves the request from the cache.
    `irforge-download.json`, written in the download folder, records the repo, the
    requested revision, the resolved commit and the files with their sizes.

    Args:
        model: an HF repo id ("owner/name") or a registry alias (`irforge models`).
        revision: a branch, tag or commit sha (default: the repo's default branch).
        include: globs replacing the default selection (see `select_files`).
        exclude: globs removed from the selection.
        format: "safetensors" or "gguf".
        quant: with gguf, the quantization to pick (f16, q8_0, Q4_K_M, ...).
        local_dir: download into this folder instead of the HF cache.
        token: a Hub access token (default: HF_TOKEN or the `hf auth login` token).
        allow_pickle: allow .bin/.pth pickle files.
        tqdm_class: progress bar class passed to huggingface_hub (default: its tqdm).

    Returns:
        The local folder, resolved commit and downloaded files.

    Raises:
        DownloadError: gated, missing or private repo, unknown revision, offline without a
            cached copy, unreachable Hub, or nothing matching the selection.

    Example:
        >>> download("llama-3.1-8b-instruct", revision="main").path  # doctest: +SKIP
    """
    from huggingface_hub import constants

    if format not in FORMATS:
        raise DownloadError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    repo_id = resolve_model(model, format)
    if quant is not None and format != "gguf":
        raise DownloadError("--quant picks a GGUF file: add --format gguf")
    target = HubTarget(
        repo_id=repo_id,
        revision=revision,
        endpoint=constants.ENDPOINT,
        cache_dir=Path(constants.HF_HUB_CACHE).expanduser(),
        local_dir=Path(local_dir).expanduser().resolve() if local_dir is not None else None,
    )
    try:
        return _download(
            target,
            token=token,
            tqdm_class=tqdm_class,
            select=dict(
                format=format,
                include=tuple(include),
                exclude=tuple(exclude),
                quant=quant,
                allow_pickle=allow_pickle,
            ),
        )
    except DownloadError:
        raise
    except Exception as e:
        mapped = hub_error(e, target, token=token)
        if mapped is None:
            raise
        raise mapped from e


def _download(
    target: HubTarget, *, token: str | None, tqdm_class: Any, select: dict[str, Any]
) -> DownloadResult:
    from huggingface_hub import snapshot_download

    commit, sizes, cache_only = _locate(target, token)
    where = f"{target.repo_id}@{target.revision or commit[:12]}"
    if cache_only:
        where += " (cached files only)"
    chosen, notes = select_files(sizes, where=where, **select)
    path = snapshot_download(
        target.repo_id,
        revision=commit,
        # Exact names: the selection is already made and pinned to this commit.
        allow_patterns=[glob.escape(n) for n in chosen],
        local_dir=target.local_dir,
        token=token,
        local_files_only=cache_only,
        tqdm_class=tqdm_class,
    )
    # With --include the user picks the files; otherwise an index must come with its shards.
    files = _verify(Path(path), chosen, sizes, where, check_shards=not select["include"])
    result = DownloadResult(
        path=Path(path),
        repo_id=target.repo_id,
        revision=commit,
        requested_revision=target.revision,
        files=files,
        from_cache_only=cache_only,
        notes=tuple(notes),
    )
    write_manifest(result, select)
    return result


def _locate(target: HubTarget, token: str | None) -> tuple[str, dict[str, int | None], bool]:
    """(commit, {file: size}, cache_only), from the Hub or, out of its reach, the cache."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    unreachable: BaseException | None = None
    if not constants.is_offline_mode():
        try:
            info = HfApi(token=token).model_info(
                target.repo_id, revision=target.revision, files_metadata=True
            )
            assert info.sha is not None, "the Hub always answers a commit sha"
            _remember_ref(target, info.sha)
            return info.sha, {s.rfilename: s.size for s in info.siblings or ()}, False
        except transport_errors() as e:
            unreachable = e
        except HfHubHTTPError as e:
            if e.response is None or e.response.status_code < 500:
                raise
            unreachable = e  # the Hub is down: fall back on the cache, as huggingface_hub does
    # Offline or unreachable: what an earlier download left on disk is all we have.
    commit = _cached_commit(target)
    sizes = _files_on_disk(target, commit) if commit else {}
    if commit is None or not sizes:
        if unreachable is None:
            raise offline_error(target)
        raise unreachable_error(target, unreachable)
    return commit, sizes, True


def _folder(target: HubTarget, commit: str) -> Path:
    if target.local_dir is not None:
        return target.local_dir
    return target.repo_folder / "snapshots" / commit


def _recorded(folder: Path) -> dict[str, Any]:
    """The irforge-download.json of an earlier download into `folder`, or {}."""
    try:
        doc = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _cached_commit(target: HubTarget) -> str | None:
    """The commit an earlier download resolved the requested revision to (HF cache refs/)."""
    revision = target.revision or "main"
    if _COMMIT.match(revision):
        return revision
    try:
        commit = (target.repo_folder / "refs" / revision).read_text().strip()
        if _COMMIT.match(commit):
            return commit
    except OSError:
        pass
    if target.local_dir is not None:
        # A local_dir download made with another HF cache still has our own record.
        doc = _recorded(target.local_dir)
        if (
            doc.get("repo_id") == target.repo_id
            and doc.get("requested_revision") == target.revision
        ):
            return str(doc.get("revision"))
    return None


def _remember_ref(target: HubTarget, commit: str) -> None:
    """Record revision -> commit in the cache's refs/ (the layout huggingface_hub documents).

    snapshot_download does this itself only when it resolves the revision; we resolve it
    (to select files at that very commit), so offline runs need the ref from us.
    """
    revision = target.revision or "main"
    if _COMMIT.match(revision):
        return
    ref = target.repo_folder / "refs" / revision
    try:
        if ref.is_file() and ref.read_text() == commit:
            return
        with AtomicFile(ref) as f:
            f.write(commit.encode())
    except Exception:  # best effort, as huggingface_hub does: the cache may be read-only
        pass


def _files_on_disk(target: HubTarget, commit: str) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    folder = _folder(target, commit)
    if not folder.is_dir():
        return found
    if target.local_dir is not None:
        # A local_dir is reused across repos and revisions: trust it only for what we recorded.
        doc = _recorded(folder)
        if doc.get("repo_id") != target.repo_id or doc.get("revision") != commit:
            return found
    for root, dirs, names in os.walk(folder):
        if Path(root) == folder:  # huggingface_hub's bookkeeping in a local_dir
            dirs[:] = [d for d in dirs if d != ".cache"]
        for name in names:
            partial = name.endswith(".incomplete") or (name[0] == "." and name.endswith(".tmp"))
            if partial or name == MANIFEST_NAME:
                continue
            full = Path(root, name)
            if full.is_file():
                found[full.relative_to(folder).as_posix()] = full.stat().st_size
    return found


def _verify(
    folder: Path,
    chosen: list[str],
    sizes: dict[str, int | None],
    where: str,
    *,
    check_shards: bool,
) -> tuple[DownloadedFile, ...]:
    files = []
    for name in chosen:
        path = folder / name
        if not path.is_file():
            raise DownloadError(f"{name} of {where} is missing from {folder}; download it again")
        size = path.stat().st_size
        expected = sizes.get(name)
        if expected is not None and size != expected:
            raise DownloadError(
                f"{path} has {size} bytes, the Hub lists {expected}: delete it and download again"
            )
        files.append(DownloadedFile(name, size))
    # A sharded checkpoint is usable only with every shard its index names.
    for name in chosen if check_shards else ():
        if name.endswith(".safetensors.index.json"):
            shards = _index_shards(folder / name)
            prefix = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
            missing = sorted(s for s in shards if prefix + s not in chosen)
            if missing:
                raise DownloadError(
                    f"{name} of {where} names shards that were not downloaded: "
                    f"{', '.join(missing[:3])} (check --include/--exclude)"
                )
    return tuple(files)


def _index_shards(index: Path) -> set[str]:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return {str(v) for v in weight_map.values()}
    except (OSError, ValueError, AttributeError) as e:
        raise DownloadError(f"{index}: not a valid safetensors index ({e})") from e


def write_manifest(result: DownloadResult, select: dict[str, Any]) -> Path:
    """Write irforge-download.json into the download folder (atomically)."""
    doc = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "repo_id": result.repo_id,
        "requested_revision": result.requested_revision,
        "revision": result.revision,
        "selection": {k: list(v) if isinstance(v, tuple) else v for k, v in select.items()},
        "files": [{"name": f.name, "size": f.size} for f in result.files],
        "producer": f"irforge {__version__}",
    }
    path = result.path / MANIFEST_NAME
    with AtomicFile(path) as f:
        f.write((json.dumps(doc, indent=2) + "\n").encode())
    return path
