"""Opening a convert SOURCE: a GGUF file, a safetensors file or index, or an HF model folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irforge.artifacts.files import tokenizer_files
from irforge.errors import InputError
from irforge.formats.safetensors import (
    INDEX_NAME,
    SafetensorsFile,
    read_folder_weights,
    read_index,
    read_safetensors,
)
from irforge.formats.tensor_ref import TensorRef


@dataclass
class Source:
    """What convert reads: tensors under their source names, plus whatever describes them."""

    kind: str  # "gguf" | "safetensors" | "safetensors-index" | "hf-folder"
    path: Path
    tensors: list[TensorRef]
    hf_config: dict[str, Any] | None = None
    gguf_metadata: dict[str, Any] | None = None
    tokenizer_files: list[Path] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)


def read_json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _safetensors_source(
    kind: str, path: Path, folder: Path, files: list[SafetensorsFile]
) -> Source:
    """Safetensors weights, described by the config.json and tokenizer files in `folder`."""
    config_path = folder / "config.json"
    hf_config = read_json_file(config_path) if config_path.is_file() else None
    inputs = [f.path for f in files] + ([config_path] if hf_config else [])
    return Source(
        kind,
        path,
        [t for f in files for t in f.tensors],
        hf_config=hf_config,
        tokenizer_files=tokenizer_files(folder),
        inputs=inputs,
    )


def open_source(path: Path) -> Source:
    """Recognize and validate a source (by content checks, not just the file name).

    Raises:
        InputError: the path is missing, of an unknown kind, or malformed.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _safetensors_source("hf-folder", path, path, read_folder_weights(path).files)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        from irforge.formats.gguf import read_gguf  # the gguf package: 50 ms, GGUF sources only

        g = read_gguf(path)
        return Source("gguf", path, g.tensors, gguf_metadata=g.metadata, inputs=[path])
    if path.name.endswith(".index.json"):
        return _safetensors_source("safetensors-index", path, path.parent, read_index(path).files)
    if path.suffix == ".safetensors":
        # A lone file: a config.json and tokenizer files beside it describe it, if present.
        return _safetensors_source("safetensors", path, path.parent, [read_safetensors(path)])
    if path.suffix == ".irpa":
        raise InputError(f"{path}: already an IRPA archive; `irforge inspect` shows what it holds")
    if path.name == INDEX_NAME or path.suffix == ".json":
        raise InputError(f"{path}: not a safetensors index (expected *.safetensors.index.json)")
    raise InputError(
        f"{path}: unknown source format; expected a .gguf file, a .safetensors file, "
        "a *.safetensors.index.json, or an HF model folder"
    )
