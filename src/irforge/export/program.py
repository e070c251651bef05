"""Tracing PagedLlama into MLIR with iree-turbine: prefill_bs{N} and decode_bs{N} per batch size.

The only module that imports iree.turbine. The model is built on the meta device and every
weight becomes an external parameter (scope "model", canonical name), so exporting needs the
config alone: no weights are read and memory does not grow with the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import ModelConfig
from ..manifest import ExportOptions
from ..model import ModelOptions, PagedLlama
from ..model.weights import canonical_name

PARAMETER_SCOPE = "model"
# Pages in the example cache handed to torch.export; the page count stays symbolic.
EXAMPLE_PAGES = 16
EXAMPLE_BLOCKS = 4


class _Sampled(torch.nn.Module):
    """The model with optional in-program top-k: (values, indices) instead of full logits."""

    def __init__(self, model: PagedLlama, top_k: int | None) -> None:
        super().__init__()
        self.model, self.top_k = model, top_k

    def _select(self, logits: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.top_k is None:
            return logits
        if self.top_k == 1:
            return torch.max(logits, dim=-1, keepdim=True)  # [N, S, 1] values and indices
        return torch.topk(logits, self.top_k, dim=-1)

    def prefill(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self._select(self.model.prefill(*args))

    def decode(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self._select(self.model.decode(*args))


def build_meta_model(config: ModelConfig, options: ExportOptions) -> PagedLlama:
    """The model with meta weights, each tagged as the external parameter it will load."""
    from iree.turbine.aot import ExternalTensorTrait

    model_options = ModelOptions(
        block_seq_stride=options.block_seq_stride,
        activation_dtype=options.activation_dtype,
        kv_cache_dtype=options.kv_cache_dtype,
        attention=options.attention,
    )
    with torch.device("meta"):
        model = PagedLlama(config, model_options).eval()
    model.requires_grad_(False)
    for name, param in model.named_parameters():  # tied weights appear once
        ExternalTensorTrait(external_scope=PARAMETER_SCOPE, external_name=canonical_name(name)).set(
            param
        )
    return model


def trace(
    config: ModelConfig,
    options: ExportOptions,
    out: Path,
    *,
    on_step: Callable[[str], None] = lambda step: None,
) -> None:
    """Export the prefill/decode programs of `config` to MLIR at `out` (overwritten)."""
    from iree.turbine.aot import FxProgramsBuilder, export

    model = build_meta_model(config, options)
    wrapped = _Sampled(model, options.top_k)
    fxb = FxProgramsBuilder(wrapped)
    stride = options.block_seq_stride
    max_blocks = -(-options.max_seq_len // stride)
    block = torch.export.Dim("block_seq", min=1, max=max_blocks)
    page = torch.export.Dim("page")
    cache_dtype = model.kv_cache.dtype

    def ints(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=torch.int64, device="meta")

    cache = torch.empty(
        EXAMPLE_PAGES, model.kv_cache.page_elements, dtype=cache_dtype, device="meta"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for bs in options.prefill_batch_sizes:
            on_step(f"tracing prefill_bs{bs}")
            _add_prefill(fxb, bs, ints, cache, block, page, stride)
        for bs in options.decode_batch_sizes:
            on_step(f"tracing decode_bs{bs}")
            _add_decode(fxb, bs, ints, cache, block, page)
    on_step("importing to MLIR")
    with warnings.catch_warnings():  # torch's pytree deprecation noise, not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        output = export(fxb, import_symbolic_shape_expressions=True)
    on_step("writing MLIR")
    output.save_mlir(str(out))


def _add_prefill(fxb, bs, ints, cache, block, page, stride) -> None:  # noqa: ANN001
    @fxb.export_program(
        name=f"prefill_bs{bs}",
        args=(ints(bs, EXAMPLE_BLOCKS * stride), ints(bs), ints(bs, EXAMPLE_BLOCKS), cache),
        dynamic_shapes={
            "tokens": {1: block * stride},
            "seq_lens": {},
            "seq_block_ids": {1: block},
            "cache": {0: page},
        },
        strict=False,
    )
    def _(module, tokens, seq_lens, seq_block_ids, cache):  # noqa: ANN001, ANN202
        return module.prefill(tokens, seq_lens, seq_block_ids, cache)


def _add_decode(fxb, bs, ints, cache, block, page) -> None:  # noqa: ANN001
    @fxb.export_program(
        name=f"decode_bs{bs}",
        args=(ints(bs, 1), ints(bs), ints(bs), ints(bs, EXAMPLE_BLOCKS), cache),
        dynamic_shapes={
            "tokens": {},
            "seq_lens": {},
            "start_positions": {},
            "seq_block_ids": {1: block},
            "cache": {0: page},
        },
        strict=False,
    )
    def _(module, tokens, seq_lens, start_positions, seq_block_ids, cache):  # noqa: ANN001, ANN202
        return module.decode(tokens, seq_lens, start_positions, seq_block_ids, cache)
