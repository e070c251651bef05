"""The model registry: seed models with their HF ids, supported TP sizes and config presets."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from irforge.artifacts.manifest import DEFAULTS
from irforge.errors import ConfigError, ShardingError
from irforge.facts.config import ModelConfig
from irforge.facts.presets import PRESETS
from irforge.facts.sharding import split_dim
from irforge.facts.tensor_kinds import expected_shapes
from irforge.formats.dtypes import BY_NAME, FLOAT_DTYPES

TINY_ALIAS = "tiny"


@dataclass(frozen=True)
class RegistryEntry:
    """A model irforge knows by name.

    `preset` names a ModelConfig in `irforge.facts.presets.PRESETS`, so a model can be planned
    (sizes, memory per device) before it is downloaded. `tp` lists the tensor-parallel sizes
    shark-ai supports for it. `repo_id` is None for the built-in tiny model.
    """

    alias: str
    repo_id: str | None
    preset: str
    tp: tuple[int, ...]
    gguf_repo: str | None = None
    description: str = ""

    @property
    def config(self) -> ModelConfig:
        """The preset's ModelConfig.

        Raises:
            ConfigError: if the preset is not defined (yet) in irforge.facts.presets.
        """
        try:
            return PRESETS[self.preset]
        except KeyError:
            raise ConfigError(
                f"model {self.alias!r} has no config preset {self.preset!r} "
                "in irforge.facts.presets"
            ) from None

    @property
    def has_config(self) -> bool:
        return self.preset in PRESETS


def _seed(
    alias: str, repo: str, tp: tuple[int, ...], what: str, gguf: str | None = None
) -> RegistryEntry:
    return RegistryEntry(alias, repo, alias, tp, gguf, what)


_TP_1_8 = (1, 2, 4, 8)

# As shark-ai's serving guide lists them (llama-serving-guide.md, "Supported Models").
ENTRIES: tuple[RegistryEntry, ...] = (
    _seed("llama-3.1-8b", "meta-llama/Llama-3.1-8B", _TP_1_8, "Llama 3.1 8B base"),
    _seed(
        "llama-3.1-8b-instruct",
        "meta-llama/Llama-3.1-8B-Instruct",
        _TP_1_8,
        "Llama 3.1 8B instruct",
        # The f16 GGUF sharktank's hf_datasets registry downloads for this model.
        gguf="SanctumAI/Meta-Llama-3.1-8B-Instruct-GGUF",
    ),
    _seed("llama-3.1-70b", "meta-llama/Llama-3.1-70B", _TP_1_8, "Llama 3.1 70B base"),
    _seed(
        "llama-3.1-70b-instruct",
        "meta-llama/Llama-3.1-70B-Instruct",
        _TP_1_8,
        "Llama 3.1 70B instruct",
    ),
    _seed("llama-3.1-405b", "meta-llama/Llama-3.1-405B", (8,), "Llama 3.1 405B base"),
    _seed(
        "llama-3.1-405b-instruct",
        "meta-llama/Llama-3.1-405B-Instruct",
        (8,),
        "Llama 3.1 405B instruct",
    ),
    _seed(
        "mistral-nemo-base-2407",
        "mistralai/Mistral-Nemo-Base-2407",
        (1,),
        "Mistral NeMo 12B base",
    ),
    _seed(
        "mistral-nemo-instruct-2407",
        "mistralai/Mistral-Nemo-Instruct-2407",
        (1,),
        "Mistral NeMo 12B instruct",
    ),
    RegistryEntry(
        TINY_ALIAS,
        None,
        "tiny",
        (1, 2),
        None,
        "built-in tiny seeded Llama for tests and demos (`irforge build tiny` makes it)",
    ),
)

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
