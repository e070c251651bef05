"""TensorRef: where one tensor's bytes are, and how to read them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

from irforge.errors import InputError
from irforge.formats.dtypes import BY_NAME, numpy_view_dtype


@dataclass(frozen=True)
class TensorRef:
    """A tensor stored in a file: `nbytes` bytes at absolute `offset` of `path`.

    `dtype` is a canonical name from dtypes.py, or a GGML quantization name such as
    "q8_0" for quantized GGUF tensors. `shape` is the logical (torch, row-major) shape.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_quantized(self) -> bool:
        return self.dtype not in BY_NAME


def read_bytes(ref: TensorRef) -> np.ndarray:
    """The raw bytes of a tensor as a read-only, memory-mapped uint8 array."""
    if ref.nbytes == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(ref.path, dtype=np.uint8, mode="r", offset=ref.offset, shape=(ref.nbytes,))


def read_range(ref: TensorRef, start: int, length: int) -> np.ndarray:
    """`length` bytes at `start` within the tensor, read with pread into a fresh buffer.

    Unlike a memory map, this keeps resident memory at the size of the chunk asked for.
    """
    if start < 0 or start + length > ref.nbytes:
        raise ValueError(f"range [{start}, {start + length}) is outside tensor {ref.name!r}")
    out = np.empty(length, dtype=np.uint8)
    with open(ref.path, "rb", buffering=0) as f:
        f.seek(ref.offset + start)
        got = f.readinto(out.data)
    if got != length:
        raise InputError(f"{ref.path}: ended early reading {ref.name!r} (was it truncated?)")
    return out


def read_tensor(ref: TensorRef) -> torch.Tensor:
    """Materialize a tensor as a torch tensor (stored dtype; float32 when dequantized)."""
    import torch

    if ref.is_quantized:
        from irforge.formats.ggml_quants import (
            dequantize,  # gguf: 50 ms of every CLI start, needed here only
        )

        return torch.from_numpy(dequantize(ref, read_bytes(ref)))
    d = BY_NAME[ref.dtype]
    raw = np.array(read_bytes(ref)).view(numpy_view_dtype(d))
    return torch.from_numpy(raw).view(d.torch).reshape(ref.shape)
