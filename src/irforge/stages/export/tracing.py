"""torch.export settings for tracing programs of thousands of parameters in linear time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock


def _param_buffer_metadata(
    params_buffers_to_node_meta: dict[str, Any], gm: Any, new_sig: Any
) -> None:
    """torch._export.utils._populate_param_buffer_metadata_to_new_gm, with the signature's
    two name maps built once: torch 2.13 rebuilds both for every placeholder, which is
    quadratic in parameters (405B at TP8 has 9k: minutes per entry point)."""
    for metadata in params_buffers_to_node_meta.values():
        metadata.pop("nn_module_stack", None)
        metadata.pop("stack_trace", None)
    named = {**new_sig.inputs_to_buffers, **new_sig.inputs_to_parameters}
    for node in gm.graph.nodes:
        if node.op == "placeholder" and named.get(node.target) in params_buffers_to_node_meta:
            node.meta.update(params_buffers_to_node_meta[named[node.target]])


@contextmanager
def fast_tracing() -> Iterator[None]:
    """Trace without a Python stack per graph node (a tenth of tracing time; the MLIR's
    locations then name no source line) and with the linear metadata copy above."""
    import torch.export._trace
    import torch.export.exported_program
    import torch.fx.config

    patches = [
        (torch.fx.config, "do_not_emit_stack_traces", True),
        (torch.export._trace, _COPY, _param_buffer_metadata),
        (torch.export.exported_program, _COPY, _param_buffer_metadata),
    ]
    with ExitStack() as stack:
        for module, name, value in patches:
            if hasattr(module, name):  # another torch may lack one: export is then slower
                stack.enter_context(mock.patch.object(module, name, value))
        yield


_COPY = "_populate_param_buffer_metadata_to_new_gm"
