"""Where a download goes: the repo and revision asked for, the endpoint and the cache folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HubTarget:
    """One download's repo, revision and folders (its messages name `where`)."""

    repo_id: str
    revision: str | None
    endpoint: str
    cache_dir: Path
    local_dir: Path | None

    @property
    def where(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id

    @property
    def repo_folder(self) -> Path:
        return self.cache_dir / ("models--" + self.repo_id.replace("/", "--"))
