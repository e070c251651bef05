"""Export traces the decoder layer once per kind of call and calls it per layer.

The numerics of such programs are checked against transformers elsewhere (test_export_run,
test_tp, test_quantize); these tests check the program's shape: one private layer function
per kind of call, the same ops at any depth, one call and one set of weight loads per
layer in each entry point, every layer's weights under its own parameter name and device.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from irforge.artifacts.files import MLIR_NAME
from irforge.artifacts.manifest import ExportOptions
from irforge.facts.presets import TINY_ALIAS, get_preset
from irforge.stages.export import export

OPTIONS = ExportOptions(prefill_batch_sizes=(1,), decode_batch_sizes=(1,))


def _export(tmp: Path, layers: int, tp: int = 1) -> str:
    out = tmp / f"l{layers}tp{tp}"
    config = get_preset(TINY_ALIAS).replace(block_count=layers)
    export(model_config=config, out_dir=out, options=OPTIONS, tp=tp)
    return (out / MLIR_NAME).read_text()


def _functions(mlir: str) -> dict[str, str]:
    """name -> body text of each func.func."""
    parts = re.split(r"^  func\.func (?:private )?@", mlir, flags=re.M)[1:]
    return {p.split("(", 1)[0]: p for p in parts}


def _ops(body: str) -> list[str]:
    return re.findall(r"= ([a-z_]+\.[a-z_.]+)", body)


@pytest.fixture(scope="module")
def shallow_and_deep(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("layers")
    return _export(tmp, 2), _export(tmp, 6)


def test_one_layer_function_per_kind_of_call_the_same_at_any_depth(
    shallow_and_deep: tuple[str, str],
) -> None:
    shallow, deep = (_functions(m) for m in shallow_and_deep)
    layer_fns = sorted(n for n in shallow if n.startswith("irforge_layers_"))
    # prefill_bs1 and score_bs1 share the prefill layer; decode_bs1 has its own
    assert [n.split("_")[2] for n in layer_fns] == ["decodekv", "prefillkv"]
    assert sorted(n for n in deep if n.startswith("irforge_layers_")) == layer_fns
    for name in layer_fns:  # the same ops; only the slab's width and the layer count differ
        assert _ops(shallow[name]) == _ops(deep[name])


def test_entry_points_grow_by_a_call_and_its_weights_per_layer(
    shallow_and_deep: tuple[str, str],
) -> None:
    shallow, deep = (_functions(m) for m in shallow_and_deep)
    for entry in ("prefill_bs1", "score_bs1", "decode_bs1"):
        assert shallow[entry].count("call @irforge_layers_") == 2
        assert deep[entry].count("call @irforge_layers_") == 6
        loads = deep[entry].count("util.global.load") - shallow[entry].count("util.global.load")
        assert loads == 4 * 9  # four more layers, nine weights each
        # per layer: its index, its call, its nine loads and their casts; nothing traced
        grown = deep[entry].count("\n") - shallow[entry].count("\n")
        assert grown <= 4 * (2 + 2 * 9 + 4), grown


def test_each_layer_loads_its_own_parameters_on_its_device(tmp_path: Path) -> None:
    mlir = _export(tmp_path, 3, tp=2)
    for layer in range(3):
        for rank in range(2):
            name = f"blk.{layer}.attn_q.weight.shard.{rank}"
            declared = re.search(
                rf"util\.global private @(\S+) {{stream\.affinity = #hal\.device\.promise"
                rf'<@__device_{rank}>}} = #flow\.parameter\.named<"model"::"{re.escape(name)}">',
                mlir,
            )
            assert declared, name
            assert f"util.global.load @{declared.group(1)} " in mlir
    # the all-reduce between ranks lives in the layer function, traced once per kind
    layer_fns = {n: b for n, b in _functions(mlir).items() if n.startswith("irforge_layers_")}
    assert len(layer_fns) == 2
    assert all("flow.tensor.transfer" in body for body in layer_fns.values())
