"""Weight-only quantization schemes: how a linear layer's weight is stored and multiplied.

A quantized linear weight `W [out, in]` is stored as `q [out, in]` in the scheme's storage
dtype plus f32 scales, symmetric:
- per output channel: `<weight>_scale [out]`, W ≈ q * scale[:, None] (the name is the
  convention of Hugging Face's fp8/int8 checkpoints). A scale follows its row: column-parallel
  weights split their scales with them, row-parallel ones replicate them.
- in blocks of B along each row (GGUF's Q8_0 is int8 in blocks of 32): `<weight>_block_scale
  [out, in / B]`, one scale per block. Block scales split along whichever dim the weight does.
Embeddings and norms stay in the activation dtype.

A scheme may also quantize the matmul's other operand inside the program (`activations`):
`w8a8` stores what `int8` stores, and its program rounds each row of activations to int8 with
its own scale (max |x| / 127, computed per token at run time, nothing calibrated) so the matmul
is int8 x int8 -> int32, what CPUs (VNNI), MI300 and CUDA run natively; the int32 product is
scaled by both scales back to the activation dtype. llm-compressor and vLLM call this W8A8
with dynamic per-token activations; `int8` is their W8A16.

`int8` multiplies integers too, without giving up the activations' precision: each row is
rounded to 16-bit fixed point (max |x| / 32639 a step, 2^-15 of the row's largest value, below
f16's own rounding there) and split into two int8 limbs, x = 256 hi + lo, stacked as twice the
rows of one int8 x int8 -> int32 matmul, so the weight is read once and each limb's int32 sum
is exact (`Scheme.row_limit`: a model whose rows are longer is refused). On llvm-cpu the
other way, widening the weight inside a float matmul, is compute-bound: 0.17x f16's decode on
the 1B shape where the limbs read at int8's rate (bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from irforge.errors import ConfigError
from irforge.formats.dtypes import BY_NAME

SCALE_SUFFIX = "_scale"
BLOCK_SCALE_SUFFIX = "_block_scale"
SCALE_DTYPE = "f32"
# `int8`'s activations in two int8 limbs, x = LIMB * hi + lo with hi in [-127, 127] and lo in
# [-128, 127]: the largest |x| a step is LIMB_QMAX
LIMB = 256
LIMB_QMAX = 127 * LIMB + 127


@dataclass(frozen=True)
class Scheme:
    name: str
    storage: str  # irforge dtype name of the stored weight
    qmax: float  # the largest magnitude the storage holds (symmetric)
    about: str
    block: int | None = None  # elements per scale along a row; None: one scale per row
    # how the program multiplies: None, the weight widened to the activation dtype; "i8", rows
    # of activations rounded to int8 per token; "i16", to 16 bits per token, in two int8 limbs
    activations: str | None = None

    @property
    def activation_qmax(self) -> float | None:
        """The largest |activation| in steps of the program's integer matmul (None: it has none)."""
        return {None: None, "i8": self.qmax, "i16": LIMB_QMAX}[self.activations]

    @property
    def row_limit(self) -> int | None:
        """The most elements a row of the integer matmul may have for its int32 sums to stay
        exact: each product is at most qmax times the largest int8 on the activations' side (a
        limb's is -128). None: no integer matmul."""
        if self.activations is None:
            return None
        side = LIMB // 2 if self.activations == "i16" else self.qmax
        return (2**31 - 1) // int(self.qmax * side)

    def scale_name(self, weight: str) -> str:
        return weight + (SCALE_SUFFIX if self.block is None else BLOCK_SCALE_SUFFIX)


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme(
            "int8",
            "i8",
            127.0,
            "int8 weights, f32 scale per output channel (symmetric); activations kept to 16 bits"
            " per token inside the program's integer matmuls",
            activations="i16",
        ),
        Scheme(
            "w8a8",
            "i8",
            127.0,
            "int8 weights as int8 stores them; activations rounded to int8 per token inside the"
            " program, so matmuls run int8 x int8 -> int32",
            activations="i8",
        ),
        Scheme("fp8", "f8_e4m3fn", 448.0, "fp8 e4m3fn weights, f32 scale per output channel"),
        # MI300 (gfx942) computes in this variant of e4m3, not the OCP one above
        Scheme(
            "fp8-fnuz", "f8_e4m3fnuz", 240.0, "fp8 e4m3fnuz weights, f32 scale per output channel"
        ),
        # what a Q8_0 GGUF holds: its blocks are kept as they are (no widening to f16)
        Scheme("q8_0", "i8", 127.0, "int8 in blocks of 32, f32 scale per block (GGUF Q8_0)", 32),
    )
}


def scheme(name: str) -> Scheme:
    """The scheme called `name`.

    Raises:
        ConfigError: naming the schemes there are.
    """
    found = SCHEMES.get(name)
    if found is None:
        raise ConfigError(f"unknown quantization {name!r}; choose one of {', '.join(SCHEMES)}")
    return found


def _blocks(rows: np.ndarray, s: Scheme) -> np.ndarray:
    """[rows, cols] floats as [rows, scales per row, elements per scale] f32."""
    n, cols = rows.shape
    width = cols if s.block is None else s.block
    if cols % width:
        raise ConfigError(f"{s.name} needs rows that are a multiple of {width}, got {cols}")
    return rows.astype(np.float32).reshape(n, cols // width, width)


def row_scales(rows: np.ndarray, s: Scheme) -> np.ndarray:
    """f32 scales of a float [rows, cols] block, [rows] (or [rows, cols / block]): max |w|
    / qmax (1 where all are zero, so that dequantizing never divides by zero)."""
    peak = np.abs(_blocks(rows, s)).max(axis=2)
    scales = np.where(peak > 0, peak / np.float32(s.qmax), np.float32(1.0)).astype(np.float32)
    return scales[:, 0] if s.block is None else scales


def quantize_rows(rows: np.ndarray, s: Scheme) -> np.ndarray:
    """A float [rows, cols] block in the scheme's storage dtype (round to nearest)."""
    blocks = _blocks(rows, s)
    peak = np.abs(blocks).max(axis=2, keepdims=True)
    scales = np.where(peak > 0, peak / np.float32(s.qmax), np.float32(1.0))
    q = np.clip(blocks / scales, -s.qmax, s.qmax).reshape(rows.shape)
    storage = BY_NAME[s.storage]
    if storage.is_float:  # ml_dtypes' fp8 cast rounds to nearest even
        return q.astype(storage.numpy)
    return np.rint(q).astype(storage.numpy)
