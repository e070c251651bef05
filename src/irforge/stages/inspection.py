"""What `irforge inspect` reports about a weights file: its format, metadata and tensors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irforge.artifacts.archive import open_archive
from irforge.artifacts.files import folder_file
from irforge.artifacts.manifest import MANIFEST_NAME, Manifest
from irforge.artifacts.sources import open_source
from irforge.errors import InputError
from irforge.facts.config import ModelConfig
from irforge.facts.quantization import SCHEMES
from irforge.formats.tensor_ref import TensorRef

# Arrays longer than this (GGUF tokenizer vocabularies) are summarized, not listed.
MAX_LISTED_ITEMS = 16


@dataclass
class Inspection:
    path: Path
    format: str
    metadata: dict[str, Any]
    tensors: list[TensorRef]
    files: list[Path] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "files": [str(f) for f in self.files],
            "metadata": self.metadata,
            "tensor_count": len(self.tensors),
            "total_bytes": self.total_bytes,
            "tensors": [
                {
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "nbytes": t.nbytes,
                    "offset": t.offset,
                    "file": str(t.path),
                }
                for t in self.tensors
            ],
        }


def summarize(value: Any) -> Any:
    if isinstance(value, list) and len(value) > MAX_LISTED_ITEMS:
        return f"<array of {len(value)} items>"
    return value


def _quantization(config: ModelConfig | None) -> str:
    if config is None or config.quantization is None:
        return "none"
    return f"{config.quantization}: {SCHEMES[config.quantization].about}"


def inspect_path(path: Path) -> Inspection:
    """Read the header of a .gguf, .safetensors, safetensors index, HF folder or .irpa.

    Raises:
        InputError: the path is missing or not a readable weights file.
    """
    path = Path(path)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return _inspect_artifacts(path)
    if path.is_file() and path.suffix == ".irpa":
        archive = open_archive(path)
        meta: dict[str, Any] = {}
        if archive.metadata is not None:
            meta = {
                "tensor_parallelism_size": archive.metadata.tensor_parallelism_size,
                "source": archive.metadata.source,
                "producer": archive.metadata.producer,
                "quantization": _quantization(archive.config),
                "config": None if archive.config is None else archive.config.to_dict(),
            }
        files = [path, *archive.rank_paths]
        return Inspection(path, "irpa", meta, list(archive.tensors.values()), files)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    src = open_source(path)
    if src.gguf_metadata is not None:
        meta = {k: summarize(v) for k, v in src.gguf_metadata.items()}
    else:
        meta = dict(src.hf_config or {})
    files = sorted({t.path for t in src.tensors})
    return Inspection(path, src.kind, meta, src.tensors, files)


def _inspect_artifacts(folder: Path) -> Inspection:
    """A folder from export/compile/build: its archive's tensors, plus what was built."""
    manifest = Manifest.load(folder)
    if not manifest.parameters:
        raise InputError(
            f"{folder}: an artifact folder exported without weights (from a preset or a config); "
            "it has no tensors to list"
        )
    inner = inspect_path(folder_file(folder, manifest.parameters[0]))
    inner.metadata["artifacts"] = {
        "options": dataclasses.asdict(manifest.options),
        "compiled": [f"{c.vmfb} ({c.target}, {c.driver})" for c in manifest.compiled],
        "tokenizer": list(manifest.tokenizer),
    }
    return Inspection(folder, "artifact folder", inner.metadata, inner.tensors, inner.files)
