"""Dequantizing GGML-quantized tensors (GGUF's Q8_0, Q4_K, ...) with the `gguf` package's code."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gguf
import numpy as np

from irforge.errors import UnsupportedModelError

if TYPE_CHECKING:
    from irforge.formats.tensor_ref import TensorRef

QUANT_BY_NAME = {t.name.lower(): t for t in gguf.GGMLQuantizationType}


def dequantize(ref: TensorRef, raw: np.ndarray) -> np.ndarray:
    """Dequantize the bytes of (part of) a quantized tensor to float32 with gguf's own code.

    `raw` holds whole rows; the result has shape `[rows, ref.shape[-1]]` flattened to the
    rows given, or `ref.shape` when all rows are given.
    """
    qtype = QUANT_BY_NAME.get(ref.dtype)
    if qtype is None:
        raise UnsupportedModelError(f"tensor {ref.name!r}: {ref.dtype} is not a GGML type")
    cols = ref.shape[-1]
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    row_bytes = cols // block * type_size
    rows = raw.size // row_bytes
    try:
        out = gguf.quants.dequantize(np.asarray(raw).reshape(rows, row_bytes), qtype)
    except NotImplementedError as e:
        raise UnsupportedModelError(
            f"tensor {ref.name!r}: the gguf package cannot dequantize {qtype.name}"
        ) from e
    out = out.astype(np.float32, copy=False).reshape(rows, cols)
    return out.reshape(ref.shape) if raw.size == ref.nbytes else out


def row_bytes(ref: TensorRef) -> int:
    """Bytes of one innermost row of a quantized tensor (the unit dequantization works in)."""
    block, type_size = gguf.GGML_QUANT_SIZES[QUANT_BY_NAME[ref.dtype]]
    return ref.shape[-1] // block * type_size
