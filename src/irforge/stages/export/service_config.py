"""The config.json shortfin reads next to a compiled model (its ModelParams, nothing more).

shortfin decodes it with `Undefined.RAISE`, so an unknown top-level key stops the server:
anything irforge wants to remember goes in manifest.json instead.
"""

from __future__ import annotations

from typing import Any

from irforge.artifacts.manifest import ExportOptions
from irforge.facts.config import ModelConfig, storage_dtype
from irforge.formats.dtypes import BY_NAME


def shortfin_config(
    config: ModelConfig, options: ExportOptions, *, has_prefill_position: bool
) -> dict[str, Any]:
    tp = options.tensor_parallelism_size
    page = config.page_elements(options.block_seq_stride, tp)
    return {
        "module_name": "module",
        "module_abi_version": 1,
        "max_seq_len": options.max_seq_len,
        "attn_head_dim": config.head_dim,
        "prefill_batch_sizes": list(options.prefill_batch_sizes),
        "has_prefill_position": has_prefill_position,
        "decode_batch_sizes": list(options.decode_batch_sizes),
        "transformer_block_count": config.block_count,
        "logits_normalization": "none",
        "top_k": options.top_k,
        "paged_kv_cache": {
            "attention_head_count_kv": config.attention_head_count_kv,
            "block_seq_stride": options.block_seq_stride,
            "device_block_count": options.device_block_count,
            "kv_cache_dtype": _resolved(options.kv_cache_dtype),
            "paged_kv_block_size_elements_per_device": [page] * tp,
        },
    }


def _resolved(dtype: str | None) -> str:
    """shortfin's name of an options dtype: torch's."""
    if dtype is None:
        raise ValueError("shortfin's config needs resolved export options (ExportOptions.resolve)")
    return BY_NAME[storage_dtype(dtype)].turbine
