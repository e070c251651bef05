"""Validating safetensors reader: single files, sharded index files, and HF model folders.

The header is checked the way the reference Rust implementation does (and a bit more), so
a hostile or truncated file fails with one clear message before any tensor is touched.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irforge.errors import InputError
from irforge.formats.dtypes import BY_SAFETENSORS
from irforge.formats.tensor_ref import TensorRef

MAX_HEADER_BYTES = 100 * 1024 * 1024
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass
class SafetensorsFile:
    path: Path
    metadata: dict[str, str]
    tensors: list[TensorRef]


@dataclass
class SafetensorsSet:
    """Tensors of one checkpoint, possibly spread over several files."""

    files: list[SafetensorsFile]
    index_path: Path | None = None
    index_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def tensors(self) -> list[TensorRef]:
        return [t for f in self.files for t in f.tensors]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise InputError(f"duplicate key {k!r} in JSON")
        out[k] = v
    return out


def _load_json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{what} is not UTF-8 ({e.reason} at byte {e.start})") from e
    if not text.lstrip().startswith("{"):
        raise InputError(f"{what} is not a JSON object")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} is not valid JSON: {e.msg} at position {e.pos}") from e
    except InputError as e:
        raise InputError(f"{what}: {e}") from e


def _is_uint(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_safetensors(path: Path) -> SafetensorsFile:
    """Parse and validate one .safetensors file's header.

    Raises:
        InputError: naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            if size < 8:
                raise InputError(
                    f"{path}: file is {size} bytes, too short for a safetensors header"
                )
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER_BYTES:
                raise InputError(
                    f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit "
                    "(not a safetensors file, or corrupt)"
                )
            if 8 + n > size:
                raise InputError(
                    f"{path}: header length {n} runs past the end of the {size}-byte file "
                    "(truncated?)"
                )
            raw = f.read(n)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from e
    try:
        header = _load_json_object(raw, "header")
        tensors, metadata = _parse_header(header, path, data_start=8 + n, data_len=size - 8 - n)
    except InputError as e:
        raise InputError(f"{path}: {e}") from e
    return SafetensorsFile(path=path, metadata=metadata, tensors=tensors)


def _parse_header(
    header: dict[str, Any], path: Path, *, data_start: int, data_len: int
) -> tuple[list[TensorRef], dict[str, str]]:
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InputError("__metadata__ must map strings to strings")
    entries = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise InputError(f"tensor {name!r}: entry is not an object")
        dtype = BY_SAFETENSORS.get(info.get("dtype"))  # type: ignore[arg-type]
        if dtype is None:
            raise InputError(f"tensor {name!r}: unknown dtype {info.get('dtype')!r}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise InputError(f"tensor {name!r}: shape must be a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_uint(o) for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise InputError(
                f"tensor {name!r}: data_offsets must be [begin, end] with begin <= end"
            )
        expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow to check
        if offsets[1] - offsets[0] != expected:
            raise InputError(
                f"tensor {name!r}: {offsets[1] - offsets[0]} bytes stored, expected {expected} "
                f"for shape {shape} of {dtype.safetensors}"
            )
        entries.append((offsets[0], offsets[1], name, dtype.name, tuple(shape)))
    entries.sort()
    cursor = 0
    for begin, end, name, _, _ in entries:
        if begin != cursor:
            kind = "overlaps the previous tensor" if begin < cursor else "leaves a gap before it"
            raise InputError(f"tensor {name!r} at byte {begin} {kind} (expected {cursor})")
        cursor = end
    if cursor != data_len:
        what = "truncated" if cursor > data_len else f"{data_len - cursor} trailing bytes"
        raise InputError(
            f"tensor data ends at {cursor} but the data section is {data_len} bytes ({what})"
        )
    tensors = [
        TensorRef(name, dt, shape, path, data_start + begin, end - begin)
        for begin, end, name, dt, shape in entries
    ]
    return tensors, metadata


def read_index(index_path: Path) -> SafetensorsSet:
    """Read a sharded checkpoint from its `*.safetensors.index.json`."""
    index_path = Path(index_path)
    try:
        raw = index_path.read_bytes()
    except OSError as e:
        raise InputError(f"{index_path}: cannot read: {e.strerror}") from e
    index = _load_json_object(raw, str(index_path))
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{index_path}: 'weight_map' must map tensor names to file names")
    folder = index_path.parent.resolve()
    files = []
    for file_name in sorted(set(weight_map.values())):
        file_path = (folder / file_name).resolve()
        if file_path.parent != folder:
            raise InputError(f"{index_path}: shard {file_name!r} is outside the index's folder")
        if not file_path.is_file():
            raise InputError(f"{index_path}: shard file {file_name!r} is missing")
        files.append(read_safetensors(file_path))
    seen: dict[str, Path] = {}
    for f in files:
        for t in f.tensors:
            if t.name in seen:
                raise InputError(f"tensor {t.name!r} is in both {seen[t.name]} and {f.path}")
            seen[t.name] = f.path
            if weight_map.get(t.name) != f.path.name:
                raise InputError(
                    f"{index_path}: tensor {t.name!r} is in {f.path.name} but the index says "
                    f"{weight_map.get(t.name)!r}"
                )
    missing = sorted(set(weight_map) - set(seen))
    if missing:
        raise InputError(f"{index_path}: tensors listed but not found in any shard: {missing[:5]}")
    raw_meta = index.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    return SafetensorsSet(files=files, index_path=index_path, index_metadata=meta)


def read_folder_weights(folder: Path) -> SafetensorsSet:
    """The safetensors weights of an HF model folder (single file or index)."""
    folder = Path(folder)
    if (folder / INDEX_NAME).is_file():
        return read_index(folder / INDEX_NAME)
    if (folder / SINGLE_NAME).is_file():
        return SafetensorsSet(files=[read_safetensors(folder / SINGLE_NAME)])
    singles = sorted(folder.glob("*.safetensors"))
    if len(singles) == 1:
        return SafetensorsSet(files=[read_safetensors(singles[0])])
    if singles:
        raise InputError(
            f"{folder}: {len(singles)} .safetensors files but no {INDEX_NAME} "
            "to say how they go together"
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pth", ".pt"))
    hint = (
        f"; found pickle weights ({', '.join(pickles[:3])}), which irforge does not load: "
        "download the safetensors variant"
        if pickles
        else ""
    )
    raise InputError(f"{folder}: no safetensors weights found{hint}")
