"""irforge model archives: an IRPA with canonical tensor names plus one JSON metadata entry.

The metadata entry (`METADATA_KEY`) holds the model's hyperparameters (ModelConfig), the
tensor-parallel layout and where the weights came from, so later stages need no other file.
A sharded archive `NAME.irpa` lists its rank files `NAME.rank{i}.irpa`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irforge import __version__
from irforge.artifacts.files import is_bare_name
from irforge.errors import InputError
from irforge.facts.config import METADATA_KEY, ModelConfig
from irforge.facts.sharding import MAX_TP, check_tensors
from irforge.formats.irpa import OutputEntry, read_irpa
from irforge.formats.tensor_ref import TensorRef, read_bytes

ARCHIVE_FORMAT = "irforge-irpa"
# Entry of each rank file naming the sharding it belongs to, so mixed-up files are caught.
RANK_KEY = "__irforge_rank__"
ARCHIVE_FORMAT_VERSION = 1


@dataclass
class ArchiveMetadata:
    """The JSON entry of an irforge archive."""

    config: ModelConfig | None
    tensor_parallelism_size: int = 1
    source: dict[str, Any] = field(default_factory=dict)
    producer: str = f"irforge {__version__}"
    shard_id: str = ""  # shared by NAME.irpa and its rank files
    # The rank files' own names, NAME.rank{i}.<shard id>.irpa: a re-shard writes a new set
    # beside the old one and switches by replacing NAME.irpa alone (see stages/sharding/shard.py).
    # Empty in archives from before: their rank files are NAME.rank{i}.irpa.
    rank_files: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        d = {
            "format": ARCHIVE_FORMAT,
            "format_version": ARCHIVE_FORMAT_VERSION,
            "config": None if self.config is None else self.config.to_dict(),
            "tensor_parallelism_size": self.tensor_parallelism_size,
            "source": self.source,
            "producer": self.producer,
            "shard_id": self.shard_id,
            "rank_files": list(self.rank_files),
        }
        return json.dumps(d, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> ArchiveMetadata:
        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{where}: metadata entry {METADATA_KEY!r} is not JSON") from e
        if not isinstance(d, dict) or d.get("format") != ARCHIVE_FORMAT:
            raise InputError(f"{where}: metadata entry {METADATA_KEY!r} is not irforge's")
        if d.get("format_version") != ARCHIVE_FORMAT_VERSION:
            raise InputError(
                f"{where}: archive format version {d.get('format_version')} is not supported "
                f"(this irforge reads {ARCHIVE_FORMAT_VERSION}); re-run `irforge convert`"
            )
        config = None if d.get("config") is None else ModelConfig.from_dict(d["config"])
        tp = d.get("tensor_parallelism_size", 1)
        if isinstance(tp, bool) or not isinstance(tp, int) or not 1 <= tp <= MAX_TP:
            raise InputError(f"{where}: tensor_parallelism_size must be 1 to {MAX_TP}, got {tp!r}")
        names = d.get("rank_files") or []
        if (
            not isinstance(names, list)
            or not all(is_bare_name(n) for n in names)
            or (names and len(names) != tp)
        ):
            raise InputError(f"{where}: rank_files must be {tp} file names beside the archive")
        return cls(
            config=config,
            tensor_parallelism_size=tp,
            source=dict(d.get("source") or {}),
            producer=str(d.get("producer", "")),
            shard_id=str(d.get("shard_id", "")),
            rank_files=tuple(names),
        )

    def entry(self) -> OutputEntry:
        raw = self.to_json()
        return OutputEntry(METADATA_KEY, len(raw), lambda: [raw], b"application/json")


@dataclass
class ModelArchive:
    """An opened irforge archive (and its rank files, when sharded)."""

    path: Path
    metadata: ArchiveMetadata | None
    tensors: dict[str, TensorRef]
    rank_paths: list[Path] = field(default_factory=list)

    @property
    def config(self) -> ModelConfig | None:
        return None if self.metadata is None else self.metadata.config

    def require_config(self) -> ModelConfig:
        if self.config is None:
            raise InputError(
                f"{self.path}: the archive has no model config (it was converted from a lone "
                "safetensors file); re-run `irforge convert` with `--config config.json`"
            )
        return self.config


def rank_entry(shard_id: str, rank: int, tp: int) -> OutputEntry:
    raw = json.dumps({"shard_id": shard_id, "rank": rank, "tensor_parallelism_size": tp}).encode()
    return OutputEntry(RANK_KEY, len(raw), lambda: [raw], b"application/json")


def _check_rank(
    path: Path, entries: dict[str, TensorRef], rank: int, want: ArchiveMetadata
) -> None:
    ref = entries.pop(RANK_KEY, None)
    got = json.loads(bytes(read_bytes(ref))) if ref is not None else {}
    if got.get("shard_id") != want.shard_id or got.get("rank") != rank:
        raise InputError(
            f"{path}: this rank file does not belong to this sharding (expected rank {rank} "
            f"of shard id {want.shard_id or '?'}); re-run `irforge shard`"
        )


def rank_path(path: Path, rank: int) -> Path:
    """`NAME.irpa` -> `NAME.rank{rank}.irpa` (shark-ai's ShardedArchiveBuilder naming)."""
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def rank_file(path: Path, metadata: ArchiveMetadata, rank: int) -> Path:
    """Where rank `rank` of the archive at `path` is: the name its metadata lists while that
    file exists (shard removes it once the canonical name links to it), else NAME.rank{i}.irpa
    (also where older archives and export's links keep them)."""
    if metadata.rank_files:
        listed = path.with_name(metadata.rank_files[rank])
        if listed.is_file():
            return listed
    return rank_path(path, rank)


def open_archive(path: Path) -> ModelArchive:
    """Open an IRPA; irforge metadata and rank files are read when present.

    Raises:
        InputError: malformed archive, or a rank file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    entries = read_irpa(path)
    tensors = {e.ref.name: e.ref for e in entries if e.ref.name != METADATA_KEY}
    meta_refs = [e.ref for e in entries if e.ref.name == METADATA_KEY]
    metadata = None
    if meta_refs:
        metadata = ArchiveMetadata.from_json(bytes(read_bytes(meta_refs[0])), str(path))
    ranks: list[Path] = []
    tp = metadata.tensor_parallelism_size if metadata else 1
    if tp > 1:
        for i in range(tp):
            rp = rank_file(path, metadata, i)  # type: ignore[arg-type]
            if not rp.is_file():
                raise InputError(f"{path}: rank file {rp.name} of {tp} is missing")
            rank_tensors = {e.ref.name: e.ref for e in read_irpa(rp)}
            _check_rank(rp, rank_tensors, i, metadata)  # type: ignore[arg-type]
            for name, ref in rank_tensors.items():
                if name in tensors:
                    raise InputError(f"{rp}: tensor {name!r} is also in another file")
                tensors[name] = ref
            ranks.append(rp)
    if metadata is not None and metadata.config is not None:
        shapes = {name: ref.shape for name, ref in tensors.items()}
        check_tensors(metadata.config, shapes, path, tp)
    return ModelArchive(path, metadata, tensors, ranks)
