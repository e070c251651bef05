"""manifest.json: what an artifact folder holds and what produced it.

export writes it; compile adds each target's VMFB; run and serve read it to find the
parameters, the program's batch sizes and the tokenizer. Paths are relative to the folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ModelConfig
from .errors import ManifestError
from .formats.atomic import AtomicFile

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ExportOptions:
    """How the program was exported (what shortfin's config.json describes, and more)."""

    prefill_batch_sizes: tuple[int, ...] = (4,)
    decode_batch_sizes: tuple[int, ...] = (4,)
    block_seq_stride: int = 32
    device_block_count: int = 512
    activation_dtype: str = "f32"
    kv_cache_dtype: str = "f32"
    attention_dtype: str = "f32"
    attention: str = "decomposed"
    top_k: int | None = None
    max_seq_len: int = 0
    tensor_parallelism_size: int = 1

    def replace(self, **changes: Any) -> ExportOptions:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Compiled:
    vmfb: str
    target: str
    driver: str
    devices: int
    flags: tuple[str, ...]
    compiler: str


@dataclass(frozen=True)
class Manifest:
    config: ModelConfig
    options: ExportOptions
    mlir: str = "model.mlir"
    parameters: tuple[str, ...] = ()  # IRPA files, the metadata file first
    tokenizer: tuple[str, ...] = ()
    compiled: tuple[Compiled, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    source: str = ""
    build: dict[str, Any] = field(default_factory=dict)  # `irforge build`'s step records
    schema_version: int = SCHEMA_VERSION

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def with_compiled(self, c: Compiled) -> Manifest:
        others = tuple(x for x in self.compiled if x.target != c.target or x.devices != c.devices)
        return self.replace(compiled=(*others, c))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        with AtomicFile(path) as f:
            f.write(json.dumps(self.to_dict(), indent=2, sort_keys=True).encode() + b"\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """From a manifest.json, or a folder containing one.

        Raises:
            ManifestError: naming the file and what is wrong.
        """
        path = Path(path)
        if not path.exists():
            raise ManifestError(f"{path}: no such file or folder")
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(
                f"{path}: no manifest; is this a folder written by `irforge export`?"
            )
        try:
            d = json.loads(path.read_text())
            if d.get("schema_version") != SCHEMA_VERSION:
                raise ManifestError(
                    f"{path}: schema_version {d.get('schema_version')} is not supported "
                    f"(this irforge reads {SCHEMA_VERSION}); re-run `irforge export`"
                )
            return cls(
                config=ModelConfig.from_dict(d["config"]),
                options=_tuples(ExportOptions, d["options"]),
                mlir=d["mlir"],
                parameters=tuple(d["parameters"]),
                tokenizer=tuple(d["tokenizer"]),
                compiled=tuple(_tuples(Compiled, c) for c in d["compiled"]),
                versions=dict(d["versions"]),
                source=d["source"],
                build=dict(d.get("build") or {}),
            )
        except ManifestError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise ManifestError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from e


def _tuples(cls: type, d: dict[str, Any]) -> Any:
    """Build a frozen dataclass from JSON, turning lists back into tuples; unknown keys fail."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise KeyError(f"unknown keys {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
