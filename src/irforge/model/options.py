"""ModelOptions: how a model is run (page size, dtypes, attention formulation), not what it is."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from irforge.artifacts.manifest import ATTENTION_KINDS, DEFAULTS, ExportOptions
from irforge.errors import ConfigError
from irforge.facts.config import FLOAT_DTYPES, KV_CACHE_DTYPES, ModelConfig, storage_dtype
from irforge.formats.dtypes import BY_NAME


@dataclass(frozen=True)
class ModelOptions:
    """Run-time choices for PagedLlama; None dtypes follow the config / the activations.

    `attention` (prefill's and decode's): `"decomposed"` writes QK^T, softmax and V as
    separate ops, with each kv head's query heads folded into rows so every cached K/V is
    read once (the default; the form IREE compiles for gfx942). `"sdpa"` uses torch's
    scaled_dot_product_attention with an explicit mask.
    """

    block_seq_stride: int = DEFAULTS.block_seq_stride
    activation_dtype: str | None = None
    kv_cache_dtype: str | None = None
    attention_dtype: str | None = None  # q/k/v and their products; softmax stays float32
    attention: str = DEFAULTS.attention

    def __post_init__(self) -> None:
        if not isinstance(self.block_seq_stride, int) or self.block_seq_stride <= 0:
            raise ConfigError(
                f"block_seq_stride must be a positive integer, got {self.block_seq_stride!r}"
            )
        for name in ("activation_dtype", "kv_cache_dtype", "attention_dtype"):
            value = getattr(self, name)
            allowed = KV_CACHE_DTYPES if name == "kv_cache_dtype" else FLOAT_DTYPES
            if value is not None and value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed} or None, got {value!r}")
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")

    @classmethod
    def of(cls, options: ExportOptions) -> ModelOptions:
        """The run-time part of an export's options (every field of this class is one there)."""
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls)})

    def activation_torch_dtype(self, config: ModelConfig) -> torch.dtype:
        return BY_NAME[self.activation_dtype or config.dtype].torch

    def attention_torch_dtype(self, config: ModelConfig) -> torch.dtype:
        return BY_NAME[self.attention_dtype or self.activation_dtype or config.dtype].torch

    def kv_cache_torch_dtype(self, config: ModelConfig) -> torch.dtype:
        return BY_NAME[
            storage_dtype(self.kv_cache_dtype or self.activation_dtype or config.dtype)
        ].torch
