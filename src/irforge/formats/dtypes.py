"""One table of element types across safetensors, GGUF, IRPA metadata, numpy and torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DType:
    name: str  # irforge's canonical name
    itemsize: int
    torch: torch.dtype
    safetensors: str
    turbine: str  # the dtype name iree-turbine's ParameterArchive metadata uses

    @property
    def is_float(self) -> bool:
        return self.torch.is_floating_point


_TABLE = [
    DType("f64", 8, torch.float64, "F64", "float64"),
    DType("f32", 4, torch.float32, "F32", "float32"),
    DType("f16", 2, torch.float16, "F16", "float16"),
    DType("bf16", 2, torch.bfloat16, "BF16", "bfloat16"),
    DType("f8_e4m3fn", 1, torch.float8_e4m3fn, "F8_E4M3", "float8_e4m3fn"),
    DType("f8_e5m2", 1, torch.float8_e5m2, "F8_E5M2", "float8_e5m2"),
    DType("i64", 8, torch.int64, "I64", "int64"),
    DType("i32", 4, torch.int32, "I32", "int32"),
    DType("i16", 2, torch.int16, "I16", "int16"),
    DType("i8", 1, torch.int8, "I8", "int8"),
    DType("u64", 8, torch.uint64, "U64", "uint64"),
    DType("u32", 4, torch.uint32, "U32", "uint32"),
    DType("u16", 2, torch.uint16, "U16", "uint16"),
    DType("u8", 1, torch.uint8, "U8", "uint8"),
    DType("bool", 1, torch.bool, "BOOL", "bool"),
]

BY_NAME = {d.name: d for d in _TABLE}
BY_SAFETENSORS = {d.safetensors: d for d in _TABLE}
BY_TURBINE = {d.turbine: d for d in _TABLE}
BY_TORCH = {d.torch: d for d in _TABLE}

# Target dtypes a user may ask convert for.
CONVERTIBLE = ("f32", "f16", "bf16")


def numpy_view_dtype(d: DType) -> np.dtype:
    """A numpy dtype of the same width, to view raw bytes before handing them to torch."""
    return np.dtype(f"<u{d.itemsize}") if d.itemsize > 1 else np.dtype(np.uint8)
