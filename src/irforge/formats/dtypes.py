"""One table of element types across safetensors, GGUF, IRPA metadata, numpy and torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DType:
    name: str  # irforge's canonical name
    itemsize: int
    kind: str  # "f" float, "i" signed int, "u" unsigned int, "b" bool
    safetensors: str
    turbine: str  # iree-turbine's metadata name; torch's attribute, HF's and shortfin's name
    hal: str  # iree.runtime.HalElementType's member

    @property
    def is_float(self) -> bool:
        return self.kind == "f"

    @property
    def is_signed(self) -> bool:
        return self.kind in "fi"

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype (ml_dtypes supplies bfloat16 and float8, which numpy lacks)."""
        if self.name in ("bf16", "f8_e4m3fn", "f8_e4m3fnuz", "f8_e5m2"):
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, self.turbine))
        return np.dtype(self.turbine if self.kind != "b" else np.bool_)

    @property
    def torch(self) -> torch.dtype:
        # torch is imported only by the paths that compute (casts, dequantization, models):
        # inspecting and byte-copying stay fast to start.
        import torch

        return getattr(torch, self.turbine)


_TABLE = [
    DType("f64", 8, "f", "F64", "float64", "FLOAT_64"),
    DType("f32", 4, "f", "F32", "float32", "FLOAT_32"),
    DType("f16", 2, "f", "F16", "float16", "FLOAT_16"),
    DType("bf16", 2, "f", "BF16", "bfloat16", "BFLOAT_16"),
    DType("f8_e4m3fn", 1, "f", "F8_E4M3", "float8_e4m3fn", "FLOAT_8_E4M3_FN"),
    DType("f8_e5m2", 1, "f", "F8_E5M2", "float8_e5m2", "FLOAT_8_E5M2"),
    # AMD MI300's fp8 (no negative zero, bias 8); safetensors has no name for it
    DType("f8_e4m3fnuz", 1, "f", "F8_E4M3FNUZ", "float8_e4m3fnuz", "FLOAT_8_E4M3_FNUZ"),
    DType("i64", 8, "i", "I64", "int64", "SINT_64"),
    DType("i32", 4, "i", "I32", "int32", "SINT_32"),
    DType("i16", 2, "i", "I16", "int16", "SINT_16"),
    DType("i8", 1, "i", "I8", "int8", "SINT_8"),
    DType("u64", 8, "u", "U64", "uint64", "UINT_64"),
    DType("u32", 4, "u", "U32", "uint32", "UINT_32"),
    DType("u16", 2, "u", "U16", "uint16", "UINT_16"),
    DType("u8", 1, "u", "U8", "uint8", "UINT_8"),
    DType("bool", 1, "b", "BOOL", "bool", "BOOL_8"),
]

BY_NAME = {d.name: d for d in _TABLE}
BY_SAFETENSORS = {d.safetensors: d for d in _TABLE}
BY_TURBINE = {d.turbine: d for d in _TABLE}

# A model's dtypes: what its weights and activations may be, what convert may cast to.
FLOAT_DTYPES = ("f32", "f16", "bf16")


def numpy_view_dtype(d: DType) -> np.dtype:
    """A numpy dtype of the same width, to view raw bytes before handing them to torch."""
    return np.dtype(f"<u{d.itemsize}") if d.itemsize > 1 else np.dtype(np.uint8)
