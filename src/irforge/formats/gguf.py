"""Validating GGUF reader (dequantization is in ggml_quants.py).

`gguf.GGUFReader` trusts its input (element counts wrap, reads past EOF pass silently), so
this module parses the header itself with every length checked against the bytes left, the
way llama.cpp's loader does since its CVE fixes. Constants come from the `gguf` package.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from irforge.errors import InputError
from irforge.formats.tensor_ref import TensorRef

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4
MAX_STRING_BYTES = 64 * 1024 * 1024
MAX_ARRAY_ITEMS = 1 << 28
DEFAULT_ALIGNMENT = 32

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType
# scalar value types: (struct format, size)
_SCALARS = {
    VT.UINT8: ("<B", 1),
    VT.INT8: ("<b", 1),
    VT.UINT16: ("<H", 2),
    VT.INT16: ("<h", 2),
    VT.UINT32: ("<I", 4),
    VT.INT32: ("<i", 4),
    VT.FLOAT32: ("<f", 4),
    VT.BOOL: ("<?", 1),
    VT.UINT64: ("<Q", 8),
    VT.INT64: ("<q", 8),
    VT.FLOAT64: ("<d", 8),
}
# GGML types stored as plain arrays, mapped to irforge dtype names.
PLAIN_TYPES = {
    QT.F32: "f32",
    QT.F16: "f16",
    QT.BF16: "bf16",
    QT.F64: "f64",
    QT.I8: "i8",
    QT.I16: "i16",
    QT.I32: "i32",
    QT.I64: "i64",
}


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorRef]
    alignment: int
    data_offset: int


class _Cursor:
    """Bounds-checked little-endian reads from a memory map."""

    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise InputError(
                f"{what} at byte {self.pos} needs {n} bytes but only {self.size - self.pos} remain "
                "(truncated or corrupt file)"
            )

    def unpack(self, fmt: str, size: int, what: str) -> Any:
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def string(self, what: str, *, strict: bool = True) -> str:
        n = self.u64(f"length of {what}")
        if n > MAX_STRING_BYTES:
            raise InputError(f"{what} claims {n} bytes, over the {MAX_STRING_BYTES}-byte limit")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8", errors="strict" if strict else "replace")
        except UnicodeDecodeError as e:
            raise InputError(f"{what} is not valid UTF-8") from e


def _read_value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> Any:
    if vtype in _SCALARS:
        fmt, size = _SCALARS[VT(vtype)]
        value = cur.unpack(fmt, size, f"value of {key!r}")
        # The shortest decimal that round-trips the float32 (1e-05, not 9.99999974e-06).
        return float(str(np.float32(value))) if vtype == VT.FLOAT32 else value
    if vtype == VT.STRING:
        return cur.string(f"value of {key!r}", strict=False)
    if vtype == VT.ARRAY:
        if depth > 0:
            raise InputError(f"{key!r}: nested arrays are not supported")
        item_type = cur.u32(f"array type of {key!r}")
        count = cur.u64(f"array length of {key!r}")
        if count > MAX_ARRAY_ITEMS:
            raise InputError(f"{key!r}: array of {count} items is over the limit")
        if item_type in _SCALARS:
            fmt, size = _SCALARS[VT(item_type)]
            cur.need(count * size, f"array {key!r}")
            arr = np.frombuffer(cur.buf, dtype=np.dtype(fmt), count=count, offset=cur.pos)
            cur.pos += count * size
            return arr.tolist()
        if item_type == VT.STRING:
            cur.need(count * 8, f"array {key!r}")  # each string has at least its length
            return [cur.string(f"item of {key!r}", strict=False) for _ in range(count)]
        raise InputError(f"{key!r}: unknown array item type {item_type}")
    raise InputError(f"{key!r}: unknown value type {vtype}")


def _tensor_nbytes(name: str, qtype: QT, ne: list[int]) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if ne[0] % block:
        raise InputError(
            f"tensor {name!r}: first dimension {ne[0]} is not a multiple of the "
            f"{qtype.name} block size {block}"
        )
    return math.prod(ne) // block * type_size


def _read_tensor_info(cur: _Cursor, index: int) -> tuple[str, QT, list[int], int]:
    name = cur.string(f"name of tensor #{index}")
    n_dims = cur.u32(f"dimension count of {name!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise InputError(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
    ne = [cur.u64(f"dimension of {name!r}") for _ in range(n_dims)]
    if math.prod(ne) >= 1 << 62:
        raise InputError(f"tensor {name!r}: element count of {ne} overflows")
    raw_type = cur.u32(f"type of {name!r}")
    try:
        qtype = QT(raw_type)
    except ValueError:
        raise InputError(f"tensor {name!r}: unknown GGML type {raw_type}") from None
    offset = cur.u64(f"offset of {name!r}")
    return name, qtype, ne, offset


def read_gguf(path: Path) -> GGUFFile:
    """Parse and validate a GGUF file's header and tensor table.

    Raises:
        InputError: naming the file and the problem (truncation, bad counts, bad offsets...).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise InputError(f"{path}: file is {size} bytes, too short for a GGUF header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                try:
                    return _parse(mm, size, path)
                except InputError as e:
                    raise InputError(f"{path}: {e}") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from e


def _parse(mm: mmap.mmap, size: int, path: Path) -> GGUFFile:
    cur = _Cursor(mm, size)
    cur.need(4, "magic")
    if mm[:4] != GGUF_MAGIC:
        raise InputError("not a GGUF file (bad magic)")
    cur.pos = 4
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        hint = " (a big-endian GGUF)" if swapped in SUPPORTED_VERSIONS else ""
        raise InputError(f"GGUF version {version}{hint} is not supported (versions 2 and 3 are)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    # Each tensor info takes at least 8+4+8+4+8 bytes and each key/value 8+4+1.
    if n_tensors * 32 + n_kv * 13 > size - cur.pos:
        raise InputError(f"{n_tensors} tensors and {n_kv} metadata entries cannot fit in the file")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        if key in metadata:
            raise InputError(f"duplicate metadata key {key!r}")
        metadata[key] = _read_value(cur, cur.u32(f"type of {key!r}"), key)
    infos = [_read_tensor_info(cur, i) for i in range(n_tensors)]
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise InputError(f"general.alignment {alignment!r} is not a power of two")
    data_offset = -(-cur.pos // alignment) * alignment
    tensors, expected, seen = [], 0, set()
    for name, qtype, ne, offset in infos:
        if name in seen:
            raise InputError(f"duplicate tensor name {name!r}")
        seen.add(name)
        nbytes = _tensor_nbytes(name, qtype, ne)
        if offset != expected:
            raise InputError(f"tensor {name!r} at data offset {offset}, expected {expected}")
        if data_offset + offset + nbytes > size:
            raise InputError(
                f"tensor {name!r} ends at byte {data_offset + offset + nbytes}, "
                f"past the end of the {size}-byte file (truncated?)"
            )
        expected = -(-(offset + nbytes) // alignment) * alignment
        dtype = PLAIN_TYPES.get(qtype, qtype.name.lower())
        # GGUF lists dims innermost first; torch shapes list them outermost first.
        tensors.append(
            TensorRef(name, dtype, tuple(reversed(ne)), path, data_offset + offset, nbytes)
        )
    return GGUFFile(path, version, metadata, tensors, alignment, data_offset)
