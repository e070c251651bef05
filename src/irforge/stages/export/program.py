"""Tracing PagedLlama into MLIR with iree-turbine: prefill_bs{N}, decode_bs{N} (and verify_bs{N})
per batch size.

The only module that imports iree.turbine. The model is built on the meta device and every
weight becomes an external parameter (scope "model", canonical name), so exporting needs the
config alone: no weights are read and memory does not grow with the model.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from irforge.artifacts.abi import DECODE, PREFILL, SCORE, VERIFY, Entry
from irforge.artifacts.files import PARAMETER_SCOPE
from irforge.artifacts.manifest import ExportOptions
from irforge.errors import InputError
from irforge.facts.config import ModelConfig
from irforge.formats.dtypes import BY_TURBINE
from irforge.formats.tensor_ref import TensorRef
from irforge.model import ModelOptions, PagedLlama
from irforge.model.sharded import ShardedPagedLlama, sharded_name
from irforge.stages.export.layer_functions import (
    PROBE,
    LayerFunctions,
    first_layer_only,
    link_layer_calls,
)
from irforge.stages.export.mlir_compat import restore_isinstance
from irforge.stages.export.tracing import fast_tracing

# Pages in the example cache handed to torch.export; the page count stays symbolic.
EXAMPLE_PAGES = 16
EXAMPLE_BLOCKS = 4
EXAMPLE_CHUNK_BLOCKS = 2


class _Sampled(torch.nn.Module):
    """The model with optional in-program top-k: (values, indices) instead of full logits."""

    def __init__(self, model: PagedLlama | ShardedPagedLlama, top_k: int | None) -> None:
        super().__init__()
        self.model, self.top_k = model, top_k

    def _select(self, logits: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.top_k is None:
            return logits
        if self.top_k == 1:
            return torch.max(logits, dim=-1, keepdim=True)  # [N, S, 1] values and indices
        return torch.topk(logits, self.top_k, dim=-1)

    def prefill(self, *args: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self._select(self.model.prefill(*args))

    def decode(self, *args: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self._select(self.model.decode(*args))

    def verify(self, *args: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self._select(self.model.verify(*args))

    def score(self, *args: Any) -> tuple[torch.Tensor, ...]:
        assert isinstance(self.model, PagedLlama)  # single-device programs only
        return self.model.score(*args)  # full logits: top_k does not apply


def _turbine_aot() -> Any:
    """iree.turbine.aot, made to work with the installed compiler's MLIR bindings first."""
    restore_isinstance()
    from iree.turbine import aot

    return aot


def _transfer(t: torch.Tensor, device: int) -> torch.Tensor:
    from iree.turbine.ops.iree import transfer_to_logical_device

    # a turbine CustomOp: called like a function, typed as the class that defines it
    return transfer_to_logical_device(f"{device}", t)  # type: ignore[call-arg, arg-type, return-value]


def build_meta_model(config: ModelConfig, options: ExportOptions) -> PagedLlama | ShardedPagedLlama:
    """The model with meta weights, each tagged as the external parameter it will load.

    With tensor parallelism, parameter i of a rank also carries that rank's device, and a
    replicated weight is one archive entry referenced from every device.
    """
    aot = _turbine_aot()
    model = _meta_model(config, options, _transfer)
    for rank, name, param in _external(model, options.tensor_parallelism_size):
        if rank is not None:
            aot.DeviceTensorTrait(rank).set(param)
        aot.ExternalTensorTrait(external_scope=PARAMETER_SCOPE, external_name=name).set(param)
    return model


def _meta_model(
    config: ModelConfig, options: ExportOptions, transfer: Callable[..., torch.Tensor]
) -> PagedLlama | ShardedPagedLlama:
    model_options = ModelOptions.of(options)
    tp = options.tensor_parallelism_size
    with torch.device("meta"):
        if tp == 1:
            model: PagedLlama | ShardedPagedLlama = PagedLlama(config, model_options)
        else:
            model = ShardedPagedLlama(config, model_options, tp=tp, transfer=transfer)
    return model.eval().requires_grad_(False)


def _external(
    model: PagedLlama | ShardedPagedLlama, tp: int
) -> Iterator[tuple[int | None, str, torch.Tensor]]:
    """(device or None, archive name, parameter) of each weight the program loads."""
    for module_name, param in model.named_parameters():  # tied weights appear once
        if tp == 1:
            yield None, module_name, param  # canonical names (Block)
        else:
            rank, name = sharded_name(module_name)
            yield rank, name, param


def check_parameters(
    config: ModelConfig, options: ExportOptions, stored: Mapping[str, TensorRef], where: Path
) -> None:
    """Every parameter the program declares is in the archive with that dtype and shape.

    IREE checks neither when it loads a parameter: it reads the stored bytes as the declared
    type, so an f32 tensor declared f16 gives garbage logits, not an error.

    Raises:
        InputError: naming the first tensor that differs.
    """
    model = _meta_model(config, options, lambda t, device: t)
    for _, name, param in _external(model, options.tensor_parallelism_size):
        ref = stored.get(name)
        if ref is None:
            raise InputError(f"{where}: tensor {name!r} is missing (the program loads it)")
        want = BY_TURBINE[str(param.dtype).removeprefix("torch.")].name
        if ref.dtype != want or tuple(ref.shape) != tuple(param.shape):
            raise InputError(
                f"{where}: tensor {name!r} is {ref.dtype} {list(ref.shape)}, the program loads "
                f"{want} {list(param.shape)}; re-run `irforge convert` to make the archive anew"
            )


def _cache_slabs(
    model: PagedLlama | ShardedPagedLlama, pages: int = EXAMPLE_PAGES
) -> list[torch.Tensor]:
    caches = (
        [model.kv_cache]
        if isinstance(model, PagedLlama)
        else [r.kv_cache for r in model.rank_list()]
    )
    return [torch.empty(pages, c.page_elements, dtype=c.dtype, device="meta") for c in caches]


def trace(
    config: ModelConfig,
    options: ExportOptions,
    out: Path,
    *,
    on_step: Callable[[str], None] = lambda step: None,
) -> None:
    """Export the prefill/decode programs of `config` to MLIR at `out` (overwritten)."""
    aot = _turbine_aot()
    model = build_meta_model(config, options)
    fxb = aot.FxProgramsBuilder(_Sampled(model, options.top_k))
    stride, tp = options.block_seq_stride, options.tensor_parallelism_size
    block = torch.export.Dim("block_seq", min=1, max=-(-options.max_seq_len // stride))
    chunk = torch.export.Dim("chunk_seq", min=1, max=-(-options.max_seq_len // stride))
    page = torch.export.Dim("page")
    slabs = _cache_slabs(model)
    # One cache argument per device; a single device takes the bare slab (shortfin's ABI).
    caches: torch.Tensor | list[torch.Tensor] = slabs[0] if tp == 1 else slabs
    cache_dims: object = {0: page} if tp == 1 else [{0: page}] * tp

    def ints(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=torch.int64, device="meta")

    def devices(n_args: int) -> dict[int, Any] | None:
        # Inputs live on device 0 and each cache slab on its own device.
        if tp == 1:
            return None
        return {
            **{i: aot.DeviceAffinity(0) for i in range(n_args)},
            **{n_args + i: aot.DeviceAffinity(i) for i in range(tp)},
        }

    prefill_dims = {
        "tokens": {1: chunk * stride},
        "start_pos": {},
        "seq_lens": {},
        "seq_block_ids": {1: block},
        "cache": cache_dims,
    }
    decode_dims = {
        "tokens": {},
        "seq_lens": {},
        "start_positions": {},
        "seq_block_ids": {1: block},
        "cache": cache_dims,
    }

    verify_dims = {
        "tokens": {},
        "start_positions": {},
        "seq_block_ids": {1: block},
        "cache": cache_dims,
    }
    dims_of = {PREFILL: prefill_dims, SCORE: prefill_dims, DECODE: decode_dims}
    dims_of[VERIFY] = verify_dims

    def example(entry: Entry, bs: int, chunk_blocks: int, blocks: int, slabs: Any) -> tuple:
        """Arguments of `entry` at batch size bs (abi.py's order)."""
        if entry is VERIFY:
            return (ints(bs, options.speculative_tokens + 1), ints(bs), ints(bs, blocks), slabs)
        tokens = 1 if entry is DECODE else chunk_blocks * stride
        return (ints(bs, tokens), ints(bs), ints(bs), ints(bs, blocks), slabs)

    # (entry, batch size): a prefill per size, the score program (single device: echo and
    # logprobs of a prompt, one row at a time, artifacts.SCORE_FUNCTION), a decode per size
    programs = [(PREFILL, bs) for bs in options.prefill_batch_sizes]
    programs += [(SCORE, 1)] if tp == 1 else []
    programs += [(DECODE, bs) for bs in options.decode_batch_sizes]
    verifies = [(VERIFY, bs) for bs in options.verify_batch_sizes]
    programs += verifies
    functions = LayerFunctions(stride, lambda name: name if tp == 1 else sharded_name(name)[1])
    model.run_layers = functions
    probe_slabs = _cache_slabs(model, PROBE.pages)
    probe_caches = probe_slabs[0] if tp == 1 else probe_slabs
    with warnings.catch_warnings(), fast_tracing():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree deprecation noise
        on_step("tracing each kind of layer once")
        # A meta run of each entry point finds each distinct layer call. Prefill's layer is
        # recorded at PROBE.batch, so its batch is dynamic and one trace serves every size
        # (score's rows are prefill's). Decode's (and verify's) is traced per size: a dynamic
        # batch there is a dimension that inlining makes constant (rows = batch × 1 token), and
        # IREE 3.13 then
        # fails to legalize the tensor.cast its canonicalization adds (the int8 limbs' concat,
        # tests/test_quantize.py).
        recorded = [(PREFILL, PROBE.batch)]
        recorded += [(DECODE, bs) for bs in options.decode_batch_sizes] + verifies
        for entry, bs in recorded:
            getattr(model, entry.method)(
                *example(entry, bs, PROBE.chunk_blocks, PROBE.blocks, probe_caches)
            )
        functions.trace_pending()
    with warnings.catch_warnings(), fast_tracing(), first_layer_only(model):
        warnings.simplefilter("ignore", FutureWarning)
        for entry, bs in programs:
            on_step(f"tracing {entry.name(bs)}")
            # a prefill chunk has its own page count, at most the pages given (shortfin's
            # `seq_len_blocks_dim_chunked`)
            args = example(entry, bs, EXAMPLE_CHUNK_BLOCKS, EXAMPLE_BLOCKS, caches)
            arg_device = None if entry is SCORE else devices(len(entry.args))
            _program(fxb, entry, bs, args, dims_of[entry], arg_device)
        on_step("importing to MLIR")
        # No symbolic shape expressions (torch.bind_symbolic_shape): with them, IREE 3.13's CPU
        # data tiling miscompiled prefill_bs4 at a start position (rows 2-3 off by 0.3) and
        # segfaulted in f16/bf16 prefill; without them both are exact (tests/test_serve_engine.py,
        # tests/test_real_scale.py) and the default code is as fast (bench/RESULTS.md).
        output = aot.export(fxb, import_symbolic_shape_expressions=False)
        link_layer_calls(output.mlir_module)
    on_step("writing MLIR")
    output.save_mlir(str(out))


def _program(fxb, entry: Entry, bs: int, args, dims, arg_device) -> None:  # noqa: ANN001
    """Register `entry` at batch size `bs`: a function of the ABI's argument names (abi.py),
    which key `dims` as torch.export reads them from its signature."""
    assert set(dims) == {*entry.args, "cache"}, (entry, dims)

    def call(module, *values):  # noqa: ANN001, ANN202
        return getattr(module, entry.method)(*values)

    params = [inspect.Parameter("module", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for name in (*entry.args, "cache")
    ]
    call.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    call.__name__ = entry.method
    fxb.export_program(
        call,
        name=entry.name(bs),
        args=args,
        dynamic_shapes=dims,
        strict=False,
        arg_device=arg_device,
    )
