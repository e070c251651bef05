"""The model registry: lookups and plans over the seed-model table (facts/presets.py)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from irforge.artifacts.manifest import DEFAULTS
from irforge.errors import ConfigError, ShardingError
from irforge.facts.config import ModelConfig
from irforge.facts.presets import ENTRIES, RegistryEntry
from irforge.facts.sharding import split_dim
from irforge.facts.tensor_kinds import expected_shapes
from irforge.formats.dtypes import BY_NAME, FLOAT_DTYPES

REGISTRY: dict[str, RegistryEntry] = {e.alias: e for e in ENTRIES}


def lookup(model: str) -> RegistryEntry | None:
    """The entry for an alias (case-insensitive) or a registered HF repo id, else None."""
    key = model.strip().lower()
    if key in REGISTRY:
        return REGISTRY[key]
    for entry in ENTRIES:
        if entry.repo_id is not None and entry.repo_id.lower() == key:
            return entry
    return None


@dataclass(frozen=True)
class ModelPlan:
    """Sizes of a model's weights and KV cache, whole and per device at one TP size.

    Weights split per the sharding rules (DESIGN.md): attn_q/k/v and ffn_gate/up along
    dim 0, attn_output, ffn_down and output along dim 1; token_embd and norms replicated
    on every device.
    """

    alias: str
    tp: int
    dtype: str
    parameters: int
    weight_bytes: int
    weight_bytes_per_device: int
    block_seq_stride: int
    kv_page_bytes_per_device: int  # one page: block_seq_stride tokens of K and V, all layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parameter_counts(config: ModelConfig) -> tuple[int, int]:
    """(replicated, split) parameter counts under the tensor-parallel sharding rules."""
    replicated = split = 0
    for name, shape in expected_shapes(config).items():
        count = math.prod(shape)
        if split_dim(name) is None:
            replicated += count
        else:
            split += count
    return replicated, split


def plan(
    entry: RegistryEntry,
    tp: int,
    dtype: str = "bf16",
    block_seq_stride: int = DEFAULTS.block_seq_stride,
) -> ModelPlan:
    """Plan a registry model at one tensor-parallel size, from its preset alone.

    Args:
        entry: the registry entry.
        tp: tensor-parallel size (number of devices).
        dtype: weight and KV-cache dtype: f32, f16 or bf16.
        block_seq_stride: tokens per KV-cache page.

    Returns:
        The parameter count, weight bytes in total and per device, and the bytes of one
        KV-cache page per device.

    Raises:
        ConfigError: for an unknown dtype or a missing preset.
        ShardingError: if `tp` does not divide the model's kv heads.
    """
    if dtype not in FLOAT_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype!r}")
    config = entry.config
    kv = config.attention_head_count_kv
    if tp < 1 or kv % tp:
        raise ShardingError(
            f"tensor-parallel size {tp} must divide attention_head_count_kv={kv} of {entry.alias}"
        )
    width = BY_NAME[dtype].itemsize
    replicated, split = parameter_counts(config)
    # Every split dim (heads*head_dim, kv*head_dim, ffn, hidden) is a multiple of tp when
    # tp divides the kv heads and the hidden size; ceil keeps the figure an upper bound.
    per_device = replicated + -(-split // tp)
    return ModelPlan(
        alias=entry.alias,
        tp=tp,
        dtype=dtype,
        parameters=replicated + split,
        weight_bytes=(replicated + split) * width,
        weight_bytes_per_device=per_device * width,
        block_seq_stride=block_seq_stride,
        kv_page_bytes_per_device=config.page_elements(block_seq_stride, tp) * width,
    )
