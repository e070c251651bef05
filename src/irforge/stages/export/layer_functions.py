"""The decoder layer traced once and called per layer: export time that does not grow with
depth.

Every decoder layer computes the same function of its own weights. Traced inline, export paid
torch.export, the decomposition trace and the MLIR import once per layer and entry point (70B:
about 31 s a layer at TP8). Here the model's `run_layers` hook (model/llama.py) puts the whole
stack of layers into one custom op, `irforge::call_layers`, whose operands are the streams
entering the first layer, what every layer shares (rope tables, masks, each device's
cache-read state) and every layer's weights; its results are the streams after the last layer
and each layer's new K/V. Each distinct stack (cache access, and batch size unless recorded
at PROBE.batch, which makes the batch a dynamic dimension) has its layer exported once as a
torch program with the weights and the layer index as inputs. After import,
`link_layer_calls` adds that program as a private function and replaces the op by one
`func.call` per layer. The entry points keep their ABI and their external parameters (each
layer's weights are loaded there and passed in); with tensor parallelism the function holds
every rank's share and the all-reduce transfers, so each device keeps its work.

The shapes a layer is traced with come from a meta run of the entry point with sizes that no
model dimension has (PROBE), so each dynamic dimension is found by its size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from irforge.model.kv_cache import DecodeKV, PagedKVCache, PrefillKV, state_of, with_state
from irforge.model.llama import KVAccess, Layered

# A result's shape: a static size, or the index of the first stream's dimension it equals.
Recipe = tuple[int | tuple[int], ...]


@dataclass(frozen=True)
class Probe:
    """Sizes of the dynamic dimensions in the meta run that finds a layer's inputs: primes
    far from any model dimension or batch size, so a size names its dimension."""

    batch: int = 1019  # rows: a layer recorded at this batch serves every batch size
    chunk_blocks: int = 1009  # prefill's tokens are chunk_blocks · stride
    blocks: int = 1013  # pages a sequence lists (seq_block_ids' width)
    pages: int = 10007  # cache slab rows


PROBE = Probe()


@dataclass
class LayerFunction:
    """One traced layer: its inputs' layout and its results' shapes.

    The function takes (streams, shared, each device's cache state, layer index, weights) and
    returns (streams, then each device's kept k and v); the op takes (streams, shared,
    states, layer 0's weights) and returns (streams, then each device's k and v of every
    layer, stacked [L, ...]). The op names only layer 0's weights, so tracing an entry point
    costs the same at any depth; link_layer_calls loads the others by their external names."""

    name: str  # of its MLIR function
    key: str  # in FUNCTIONS: unique to this export, as two may trace at once
    n_streams: int
    n_shared: int
    kind: type[PrefillKV] | type[DecodeKV]
    caches: tuple[PagedKVCache, ...]  # each device's page layout
    index: int  # the layer it was traced on: its weights' names are that layer's
    weight_names: tuple[str, ...]
    parameters: tuple[tuple[str, ...], ...]  # each layer's weights' external names, in order
    results: tuple[tuple[Recipe, torch.dtype], ...]
    program: torch.export.ExportedProgram | None = None

    @property
    def n_fixed(self) -> int:
        """Operands of the op before the weights."""
        return self.n_streams + self.n_shared + len(self.kind.STATE) * len(self.caches)

    def op_results(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Meta results of the op on `args`."""
        x, layers = args[0], len(self.parameters)
        return [
            torch.empty(
                [*([] if i < self.n_streams else [layers])]
                + [d if isinstance(d, int) else x.shape[d[0]] for d in recipe],
                dtype=dt,
                device="meta",
            )
            for i, (recipe, dt) in enumerate(self.results)
        ]


# Functions by name: the op's fake results and link_layer_calls read them after tracing.
FUNCTIONS: dict[str, LayerFunction] = {}
_serial = itertools.count()


_OP = "irforge::call_layers"
_OP_NAME = "torch." + _OP.replace("::", ".")  # as torch-mlir's importer names it


@torch.library.custom_op(_OP, mutates_args=())
def call_layers(fn: str, args: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every layer of function `fn`: a placeholder in a traced entry point, which
    `link_layer_calls` replaces by calls of the function (it never runs eagerly)."""
    raise NotImplementedError("irforge::call_layers only exists in traced programs")


@call_layers.register_fake
def _call_layers_results(fn: str, args: list[torch.Tensor]) -> list[torch.Tensor]:
    return FUNCTIONS[fn].op_results(args)


class _Capture:
    """Cache access inside the traced layer: reads through the state it was given, with the
    layer index as a tensor, and hands what flush keeps of the new K/V back as results."""

    def __init__(self, kv: PrefillKV | DecodeKV, layer: torch.Tensor) -> None:
        self.kv, self.layer = kv, layer
        self.kept: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.kept = self.kv.kept(k, v)
        return self.kv.read(self.layer, k, v)


class _Layer(nn.Module):
    """model.layer as a module's forward, for torch.func.functional_call."""

    def __init__(self, model: Layered) -> None:
        super().__init__()
        self.model = model

    def forward(self, index: int, *args: Any, kvs: Sequence[Any]) -> tuple[torch.Tensor, ...]:
        return self.model.layer(index, *args, kvs=kvs)


class _Traced(nn.Module):
    """Layer `fn.index` as a function of (streams, shared, states, layer index, weights)."""

    call: _Layer

    def __init__(self, model: Layered, fn: LayerFunction) -> None:
        super().__init__()
        self.fn = fn
        # not a submodule: torch.export would lift the model's own parameters as inputs too
        object.__setattr__(self, "call", _Layer(model))

    def forward(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        fn, width = self.fn, len(self.fn.kind.STATE)
        args = inputs[: fn.n_streams + fn.n_shared]
        states = inputs[len(args) : fn.n_fixed]
        layer, weights = inputs[fn.n_fixed], inputs[fn.n_fixed + 1 :]
        captures = [
            _Capture(with_state(fn.kind, cache, states[i * width : (i + 1) * width]), layer)
            for i, cache in enumerate(fn.caches)
        ]
        params = {f"model.{n}": w for n, w in zip(fn.weight_names, weights, strict=True)}
        outs = torch.func.functional_call(
            self.call,
            params,
            (fn.index, *args),
            {"kvs": captures},  # type: ignore[attr-defined]
        )
        kept = [t for c in captures for t in (c.kept or ())]
        return (*outs, *kept)


class LayerFunctions:
    """A model's LayerRunner for export: records, traces each kind of layer once, calls.

    While `recording`, entry points run on meta inputs of PROBE sizes and the first layer of
    each distinct stack is noted; `trace_pending()` exports those; afterwards, while the
    entry points are traced, each stack is one `irforge::call_layers` op naming its function.
    """

    def __init__(self, stride: int, external_name: Callable[[str], str]) -> None:
        """external_name: the parameter name a program loads for a model's parameter."""
        self.external_name = external_name
        self.dims = _DimsBySize(stride)
        self.functions: dict[str, LayerFunction] = {}  # by kind of cache access (and batch)
        self._examples: dict[str, tuple[Layered, list[torch.Tensor]]] = {}
        self.recording = True

    def __call__(
        self,
        model: Layered,
        streams: tuple[torch.Tensor, ...],
        rest: tuple[torch.Tensor, ...],
        kvs: Sequence[KVAccess],
    ) -> tuple[torch.Tensor, ...]:
        kind, batch = type(kvs[0]).__name__, int(streams[0].shape[0])
        key = kind if batch == PROBE.batch else f"{kind}_bs{batch}"
        if key not in self.functions and kind in self.functions:
            key = kind  # recorded at PROBE.batch: it serves every batch size
        states = [t for kv in kvs for t in state_of(kv)]
        if self.recording and key not in self.functions:
            self._note(key, model, streams, rest, kvs, states)
        fn = self.functions[key]
        if self.recording:  # layer 0 gives every layer's shapes
            first = _Traced(model, fn)([*streams, *rest, *states, *self._zero(model)])
            count = model.layer_count
            outs = [
                *first[: fn.n_streams],
                *(t.expand(count, *t.shape) for t in first[fn.n_streams :]),
            ]
        else:
            weights = [p for _, p in model.layer_parameters(0)]
            outs = call_layers(fn.key, [*streams, *rest, *states, *weights])
        kept = outs[fn.n_streams :]
        for i, kv in enumerate(kvs):
            kv.keep_all(kept[2 * i], kept[2 * i + 1])
        return tuple(outs[: fn.n_streams])

    @staticmethod
    def _zero(model: Layered) -> list[torch.Tensor]:
        """Layer 0's index and weights: the inputs that follow the cache states."""
        layer = torch.zeros((), dtype=torch.int64, device="meta")
        return [layer, *(p for _, p in model.layer_parameters(0))]

    def _note(
        self,
        key: str,
        model: Layered,
        streams: tuple[torch.Tensor, ...],
        rest: tuple[torch.Tensor, ...],
        kvs: Sequence[KVAccess],
        states: list[torch.Tensor],
    ) -> None:
        """Trace-to-be of layer 0 of this stack, and its results' shapes."""
        named = model.layer_parameters(0)
        name = f"irforge_layers_{key.lower()}"
        fn = LayerFunction(
            name=name,
            key=f"{name}#{next(_serial)}",
            n_streams=len(streams),
            n_shared=len(rest),
            kind=type(kvs[0]),
            caches=tuple(kv.cache for kv in kvs),
            index=0,
            weight_names=tuple(n for n, _ in named),
            parameters=tuple(
                tuple(self.external_name(n) for n, _ in model.layer_parameters(i))
                for i in range(model.layer_count)
            ),
            results=(),
        )
        example = [*streams, *rest, *states, *self._zero(model)]
        outs = _Traced(model, fn)(example)
        fn.results = tuple((self.dims.recipe(t, streams[0]), t.dtype) for t in outs)
        self.functions[key] = fn
        self._examples[fn.name] = (model, example)

    def trace_pending(self) -> None:
        """torch.export each layer noted so far (weights as inputs), decomposed as
        iree-turbine decomposes entry points; then stop recording."""
        from iree.turbine.aot.decompositions import current_aot_decompositions

        for fn in self.functions.values():
            if fn.name not in self._examples:
                continue
            model, example = self._examples.pop(fn.name)
            n_weights = len(fn.weight_names)
            specs = [self.dims.of(t) for t in example[: len(example) - n_weights]]
            specs += [None] * n_weights
            inputs = [torch.empty(t.shape, dtype=t.dtype, device="meta") for t in example]
            program = torch.export.export(
                _Traced(model, fn),
                (inputs,),
                dynamic_shapes={"inputs": specs},
                strict=False,
            )
            decompositions = current_aot_decompositions()
            if decompositions:
                program = program.run_decompositions(decompositions)
            fn.program = program
            FUNCTIONS[fn.key] = fn
        self.recording = False


@contextmanager
def first_layer_only(model: nn.Module) -> Iterator[None]:
    """The model holding layer 0 alone (each `blk` list cut to its first block) while the
    entry points are traced: torch.export lifts every parameter of the module it traces, used
    or not (9k at 405B TP8), and the traced op names only layer 0's weights."""
    lists = [m for m in model.modules() if isinstance(getattr(m, "blk", None), nn.ModuleList)]
    kept = [cast(nn.ModuleList, m.blk) for m in lists]
    for m, blk in zip(lists, kept, strict=True):
        m.blk = nn.ModuleList(blk[:1])
    try:
        yield
    finally:
        for m, blk in zip(lists, kept, strict=True):
            m.blk = blk


class _DimsBySize:
    """torch.export dims of a probe tensor: a size of PROBE's names its dynamic dimension."""

    def __init__(self, stride: int) -> None:
        chunk = torch.export.Dim("chunk")
        batch = torch.export.Dim("batch")
        block = torch.export.Dim("block")
        self.by_size: dict[int, Any] = {
            PROBE.batch: batch,
            PROBE.chunk_blocks * stride: chunk * stride,
            PROBE.blocks * stride: block * stride,
            PROBE.blocks: block,
            PROBE.pages: torch.export.Dim("page"),
        }

    def of(self, t: torch.Tensor) -> dict[int, Any] | None:
        spec = {i: self.by_size[s] for i, s in enumerate(t.shape) if s in self.by_size}
        return spec or None

    def recipe(self, t: torch.Tensor, x: torch.Tensor) -> Recipe:
        """t's shape in terms of x's dynamic dimensions (a result of a layer on stream x)."""
        out: list[int | tuple[int]] = []
        for s in t.shape:
            if s not in self.by_size:
                out.append(int(s))
            elif s in x.shape:
                out.append((list(x.shape).index(s),))
            else:
                raise AssertionError(f"a layer result has dimension {s}, not one of {x.shape}")
        return tuple(out)


def link_layer_calls(module: Any) -> None:
    """Replace each `irforge::call_layers` of an imported module by a `func.call` of its layer
    function per layer (imported once, as a private function), each given its layer's weights:
    the globals of layer 0's, copied under the other layers' parameter names."""
    from iree.compiler.extras.fx_importer import FxImporter
    from iree.turbine.support.ir_imports import (
        FlatSymbolRefAttr,
        InsertionPoint,
        Operation,
        OpResult,
        StringAttr,
        SymbolTable,
    )
    from iree.turbine.transforms.general.custom_op_expansion import ExpandCustomOpsPass
    from iree.turbine.transforms.merger import Merger

    module_op = module.operation
    symbols = SymbolTable(module_op)
    weights = _LayerWeights(module_op, symbols)
    linked: dict[str, LayerFunction] = {}  # taken from FUNCTIONS, which keeps no old export
    ops = [
        op
        for func in module_op.regions[0].blocks[0].operations
        if func.operation.name == "func.func"
        for block in func.regions[0].blocks
        for op in block.operations
        if op.operation.name == "torch.operator"
        and StringAttr(op.attributes["name"]).value == _OP_NAME
    ]
    for op in ops:
        name_op, list_op = (OpResult(v).owner for v in op.operands)
        key = StringAttr(name_op.attributes["value"]).value
        fn = linked[key] if key in linked else FUNCTIONS.pop(key)
        linked[key] = fn
        if fn.name not in symbols:
            importer = FxImporter(context=module_op.context)
            importer.import_program(
                fn.program,
                func_name=fn.name,
                func_visibility="private",
                import_symbolic_shape_expressions=False,
            )
            ExpandCustomOpsPass(importer.module_op).run()  # TP's device transfers
            Merger(importer.module_op.operation, module_op, target_symbol_table=symbols).merge()
        ftype = symbols[fn.name].type
        operands = list(list_op.operands)
        streams, shared = operands[: fn.n_streams], operands[fn.n_streams : fn.n_fixed]
        first = operands[fn.n_fixed :]
        (unpack,) = [use.owner for use in op.results[0].uses]
        per_layer: list[list[Any]] = []  # each layer's kept k, v of each device
        with InsertionPoint(op), op.location:
            # to the function's types (its batch dimension is dynamic) once, not per layer
            fixed = [*streams, *shared]
            fixed = [_cast(v, t) for v, t in zip(fixed, ftype.inputs[: fn.n_fixed], strict=True)]
            streams, shared = fixed[: fn.n_streams], fixed[fn.n_streams :]
            for layer, names in enumerate(fn.parameters):
                index = Operation.create(
                    "torch.vtensor.literal",
                    results=[ftype.inputs[fn.n_fixed]],
                    attributes={"value": _i64_scalar(layer, module_op.context)},
                ).results[0]
                own = (
                    first
                    if layer == 0
                    else [weights.like(w, n) for w, n in zip(first, names, strict=True)]
                )
                args = [*streams, *shared, index, *own]
                call = Operation.create(
                    "func.call",
                    results=list(ftype.results),
                    operands=[_cast(v, t) for v, t in zip(args, ftype.inputs, strict=True)],
                    attributes={"callee": FlatSymbolRefAttr.get(fn.name)},
                )
                streams = list(call.results[: fn.n_streams])
                per_layer.append(list(call.results[fn.n_streams :]))
        with InsertionPoint(unpack), unpack.location:
            stacked = []
            for i in range(len(per_layer[0])):
                to = unpack.results[fn.n_streams + i].type  # [L, ...] at this batch size
                one = _layer_type(to)
                stacked.append(_stack([_cast(kept[i], one) for kept in per_layer], to))
            for old, new in zip(unpack.results, [*streams, *stacked], strict=True):
                old.replace_all_uses_with(_cast(new, old.type))
        unpack.erase()
        op.erase()
        for dead in (list_op, name_op):
            if not list(dead.results[0].uses):
                dead.erase()
    module_op.verify()  # a malformed module would otherwise print in generic form


class _LayerWeights:
    """Other layers' weights as copies of layer 0's globals (same type, device and scope)
    under their own parameter names, each created once per module."""

    def __init__(self, module_op: Any, symbols: Any) -> None:
        self.module_op, self.symbols = module_op, symbols
        self.made: dict[tuple[str, str], str] = {}  # (layer-0 global, parameter) -> global

    def like(self, value: Any, parameter: str) -> Any:
        """Layer 0's weight `value` (a global's load, as torch sees it) for `parameter`."""
        from iree.turbine.support.ir_imports import (
            Attribute,
            FlatSymbolRefAttr,
            InsertionPoint,
            Operation,
            OpResult,
            StringAttr,
        )

        to_torch = OpResult(value).owner  # torch_c.from_builtin_tensor
        load = OpResult(to_torch.operands[0]).owner  # util.global.load
        source = FlatSymbolRefAttr(load.attributes["global"]).value
        key = (source, parameter)
        if key not in self.made:
            template = self.symbols[source]
            name = f"__auto.{parameter}"
            while name in self.symbols:
                name += "$"
            copy = template.operation.clone(ip=InsertionPoint(template))
            copy.attributes["sym_name"] = StringAttr.get(name)
            # #flow.parameter.named<"scope"::"name"> : type, with this layer's name
            head, tail = str(template.attributes["initial_value"]).split('::"', 1)
            typed = tail.split('"', 1)[1]
            copy.attributes["initial_value"] = Attribute.parse(f'{head}::"{parameter}"{typed}')
            self.symbols.insert(copy)
            self.made[key] = name
        attributes = {n: load.attributes[n] for n in load.attributes}
        attributes["global"] = FlatSymbolRefAttr.get(self.made[key])
        new_load = Operation.create(
            "util.global.load", results=[load.results[0].type], attributes=attributes
        )
        return Operation.create(
            "torch_c.from_builtin_tensor", results=[value.type], operands=[new_load.results[0]]
        ).results[0]


def _i64_scalar(value: int, context: Any) -> Any:
    """dense<value> : tensor<si64>, the literal of a 0-d int64 torch tensor."""
    from iree.turbine.support.ir_imports import (
        DenseElementsAttr,
        IntegerAttr,
        IntegerType,
        RankedTensorType,
    )

    with context:
        i64 = IntegerType.get_signed(64)
        return DenseElementsAttr.get_splat(
            RankedTensorType.get([], i64), IntegerAttr.get(i64, value)
        )


def _stack(values: list[Any], to: Any) -> Any:
    """torch.aten.stack of values along a new leading dimension, typed `to`."""
    from iree.turbine.support.ir_imports import IntegerAttr, IntegerType, IrType, Operation

    listed = Operation.create(
        "torch.prim.ListConstruct", results=[IrType.parse("!torch.list<vtensor>")], operands=values
    ).results[0]
    zero = Operation.create(
        "torch.constant.int",
        results=[IrType.parse("!torch.int")],
        attributes={"value": IntegerAttr.get(IntegerType.get_signless(64), 0)},
    ).results[0]
    return Operation.create("torch.aten.stack", results=[to], operands=[listed, zero]).results[0]


def _layer_type(stacked: Any) -> Any:
    """The type of one layer's part of a `[L, ...]` torch tensor type."""
    from iree.turbine.support.ir_imports import IrType

    head, rest = str(stacked).split("[", 1)  # !torch.vtensor<[L,d1,...],dtype>
    return IrType.parse(head + "[" + rest.split(",", 1)[1])


def _cast(value: Any, to: Any) -> Any:
    """value as type `to` (torch.tensor_static_info_cast when only static shape info differs)."""
    from iree.turbine.support.ir_imports import Operation

    if value.type == to:
        return value
    return Operation.create(
        "torch.tensor_static_info_cast", results=[to], operands=[value]
    ).results[0]
