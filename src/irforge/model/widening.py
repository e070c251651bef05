"""Rows times a weight stored narrower than them (f32 rows, f16 or bf16 weight), the weight
widened inside the matmul's own loop.

Written as torch ops, `F.linear(x, w.float())`, the import hands IREE a separate `extf` of the
whole weight before the matmul, and IREE 3.13 runs it on every call: on llvm-cpu it converted
and packed every weight each step (82% of a SmolLM2 decode step). With the `extf` inside the
contraction's body, data tiling packs the stored f16 once, at load, and the CPU multiplies f32
rows by f16 columns (`mmt4d ... f32xf16xf32`): 1.1-1.6x faster than f16 rows by f16 in SmolLM2
decode steps of 4 to 32 rows, where the f16 x f16 tile converts every broadcast row element
(bench/RESULTS.md). A dynamic row count (prefill) IREE data-tiles with the operands swapped,
which is as fast as f16 rows, no faster.

The op is an iree-turbine CustomOp: run eagerly, `F.linear` of the widened weight (the same
products and f32 sums); in an exported program, a call of the function below, which IREE
inlines.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from iree.turbine.runtime.op_reg import (
    CustomOp,
    KernelBuilder,
    KernelSelection,
    TensorArg,
    def_library,
)
from iree.turbine.runtime.op_reg.impl_helper import TemplateLoader, call_function

LIBRARY = def_library("irforge_linear")  # its own: irforge:: holds torch custom ops
# the weight dtypes it widens to f32, as MLIR names them
WIDENED = {torch.float16: "f16", torch.bfloat16: "bf16"}

# x [?, K] f32 times w [N, K] as [?, N] f32; the rows stay dynamic here, and a static count
# comes back with IREE's inlining
_FUNCTION = """
module {{
util.func private @{fn}(%x: tensor<?x{k}xf32>, %w: tensor<{n}x{k}x{wt}>) -> tensor<?x{n}xf32> {{
  %c0 = arith.constant 0 : index
  %zero = arith.constant 0.0 : f32
  %rows = tensor.dim %x, %c0 : tensor<?x{k}xf32>
  %empty = tensor.empty(%rows) : tensor<?x{n}xf32>
  %acc = linalg.fill ins(%zero : f32) outs(%empty : tensor<?x{n}xf32>) -> tensor<?x{n}xf32>
  %out = linalg.generic {{
      indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>,
                       affine_map<(m, n, k) -> (m, n)>],
      iterator_types = ["parallel", "parallel", "reduction"]}}
      ins(%x, %w : tensor<?x{k}xf32>, tensor<{n}x{k}x{wt}>) outs(%acc : tensor<?x{n}xf32>) {{
  ^bb0(%a: f32, %b: {wt}, %c: f32):
    %bw = arith.extf %b : {wt} to f32
    %p = arith.mulf %a, %bw : f32
    %s = arith.addf %c, %p : f32
    linalg.yield %s : f32
  }} -> tensor<?x{n}xf32>
  util.return %out : tensor<?x{n}xf32>
}}
}}
"""


class _Function(TemplateLoader):
    """_FUNCTION for one weight shape (turbine's loaders read template files)."""

    def load_template(self, kb: KernelBuilder, name: str, **kwargs: Any) -> Any:
        return self._parse_module_asm(kb, _FUNCTION.format(**kwargs))


def widening_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M, K] f32 @ w.T, w [N, K] f16 or bf16: [M, N] f32, w widened inside the matmul."""
    if x.dtype != torch.float32 or w.dtype not in WIDENED or x.dim() != 2 or w.dim() != 2:
        raise TypeError(
            f"widening_linear takes f32 rows [M, K] and an f16 or bf16 weight [N, K], got "
            f"{x.dtype} {list(x.shape)} and {w.dtype} {list(w.shape)}"
        )
    # a turbine CustomOp: called like a function, typed as the class that defines it
    return cast(torch.Tensor, _WideningLinear(x, w))  # type: ignore[call-arg, arg-type]


@CustomOp.register(library=LIBRARY)
class _WideningLinear(CustomOp):
    signature = "widening_linear(Tensor x, Tensor w) -> Tensor"

    def select(self, ksel: KernelSelection) -> None:
        x, w = ksel.arg_tensor(0), ksel.arg_tensor(1)  # as widening_linear checked them
        x.specialize_dims(1)
        w.specialize_all_dims()
        ksel.return_new_tensor([x.t.shape[0], w.t.shape[0]], x.t.dtype).specialize_dims(1)

    def eager_execute(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w.to(x.dtype))

    def generate(self, ksel: KernelSelection, kb: KernelBuilder) -> None:
        w = cast(TensorArg, ksel.arg_descs[1]).t
        n, k, wt = w.shape[0], w.shape[1], WIDENED[w.dtype]
        name = f"irforge_widening_linear_{n}x{k}x{wt}"
        func = _Function().inline_template_function(kb, name, name, fn=name, n=n, k=k, wt=wt)
        kb.yield_results(*call_function(func, *kb.arg_bindings))
