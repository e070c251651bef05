"""ModelConfig: what a Llama-family model is, read from HF config.json, GGUF metadata or an IRPA.

Field names follow GGUF's `{arch}.*` keys (the canonical vocabulary of irforge). How a model
was *processed* (tensor parallelism, batch sizes, targets) does not belong here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from irforge.errors import ConfigError, UnsupportedModelError
from irforge.formats.dtypes import FLOAT_DTYPES

CONFIG_SCHEMA_VERSION = 1

# Entry name of the JSON hyperparameters inside an irforge IRPA archive.
METADATA_KEY = "__irforge_config__"

SUPPORTED_ARCHITECTURES = ("llama",)
# fp8 KV caches, by the name options take -> the dtype table's name (formats/dtypes.py):
# e4m3fn elsewhere, e4m3fnuz on MI300 (gfx942), as shark-ai's fp8 builds for it used.
FP8_DTYPES = {"fp8": "f8_e4m3fn", "fp8-fnuz": "f8_e4m3fnuz"}
KV_CACHE_DTYPES = (*FLOAT_DTYPES, *FP8_DTYPES)


def storage_dtype(name: str) -> str:
    """The dtype table's name of an options dtype ('fp8' -> 'f8_e4m3fn'; 'f16' stays)."""
    return FP8_DTYPES.get(name, name)


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1's `llama3` rope frequency scaling (HF `rope_scaling`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_context_length: int
    rope_type: str = "llama3"


# Upper bounds well past any published model (Llama-3.1-405B: hidden 16384, 126 layers,
# vocab 128256, context 131072), so that a config from an untrusted file cannot ask for an
# export that runs for hours or a shard that allocates petabytes.
_SIZE_LIMITS = {
    "vocab_size": 2**22,
    "context_length": 2**24,
    "embedding_length": 2**17,
    "block_count": 1024,
    "feed_forward_length": 2**20,
    "attention_head_count": 1024,
    "attention_head_count_kv": 1024,
    "head_dim": 2048,
}


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a Llama-family decoder (Llama 3.x, Mistral, Mistral-Nemo).

    `head_dim` is explicit because Mistral-Nemo's is not embedding_length / head_count.
    `rope_interleaved` records the q/k row layout of the weights: llama.cpp's GGUF converter
    permutes q/k rows for interleaved (GPT-J style) rotary embedding, HF checkpoints keep
    the half-split (NeoX style) layout. The model honors it so conversion stays a byte copy.
    Llama-3.1 rope scaling arrives either as HF `rope_scaling` (`rope_scaling`) or as GGUF's
    `rope_freqs.weight` per-frequency divisors (`rope_freq_factors`); never both.
    """

    vocab_size: int
    context_length: int
    embedding_length: int
    block_count: int
    feed_forward_length: int
    attention_head_count: int
    attention_head_count_kv: int
    head_dim: int
    rms_norm_eps: float
    rope_freq_base: float
    architecture: str = "llama"
    rope_scaling: RopeScaling | None = None
    rope_freq_factors: tuple[float, ...] | None = None
    rope_interleaved: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    dtype: str = "f32"
    # Weight-only quantization of the linear layers (quantization.SCHEMES), None: none.
    # `dtype` stays the activations' (and the embeddings' and norms') dtype.
    quantization: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        self.validate()

    # -- derived values -------------------------------------------------------------------
    @property
    def n_rep(self) -> int:
        """How many query heads share one kv head (GQA)."""
        return self.attention_head_count // self.attention_head_count_kv

    def page_elements(self, block_seq_stride: int, tp: int = 1) -> int:
        """Elements of one KV-cache page on one device (shortfin's paged_kv_block_size)."""
        kv_per_device = self.attention_head_count_kv // tp
        return kv_page_elements(self.block_count, kv_per_device, block_seq_stride, self.head_dim)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        for name, most in _SIZE_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= most:
                raise ConfigError(f"{name} must be an integer from 1 to {most}, got {value!r}")
        if self.attention_head_count % self.attention_head_count_kv:
            raise ConfigError(
                f"attention_head_count={self.attention_head_count} is not a multiple of "
                f"attention_head_count_kv={self.attention_head_count_kv}"
            )
        ids = [self.bos_token_id] if self.bos_token_id is not None else []
        for t in [*ids, *self.eos_token_ids]:
            if isinstance(t, bool) or not isinstance(t, int) or t < 0:
                raise ConfigError(f"token ids (bos/eos) must be non-negative integers, got {t!r}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not (self.rms_norm_eps > 0 and math.isfinite(self.rms_norm_eps)):
            raise ConfigError(f"rms_norm_eps must be positive, got {self.rms_norm_eps!r}")
        if not (self.rope_freq_base > 0 and math.isfinite(self.rope_freq_base)):
            raise ConfigError(f"rope_freq_base must be positive, got {self.rope_freq_base!r}")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"architecture {self.architecture!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        if self.dtype not in FLOAT_DTYPES:
            raise ConfigError(f"dtype must be one of {FLOAT_DTYPES}, got {self.dtype!r}")
        if self.quantization is not None:
            from irforge.facts.quantization import scheme

            quant = scheme(self.quantization)
            longest = max(
                self.embedding_length,
                self.feed_forward_length,
                self.attention_head_count * self.head_dim,
            )
            if quant.row_limit is not None and longest > quant.row_limit:
                raise ConfigError(
                    f"{quant.name} multiplies rows of at most {quant.row_limit} elements exactly;"
                    f" this model's longest linear-layer input has {longest}"
                )
        if self.rope_freq_factors is not None:
            if self.rope_scaling is not None:
                raise ConfigError("rope_scaling and rope_freq_factors are exclusive")
            if len(self.rope_freq_factors) != self.head_dim // 2:
                raise ConfigError(
                    f"rope_freq_factors has {len(self.rope_freq_factors)} entries, "
                    f"expected head_dim/2 = {self.head_dim // 2}"
                )

    # -- serialization --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["schema_version"] = CONFIG_SCHEMA_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        d = dict(d)
        version = d.pop("schema_version", CONFIG_SCHEMA_VERSION)
        if version != CONFIG_SCHEMA_VERSION:
            raise ConfigError(
                f"model config schema_version {version} is not supported "
                f"(this irforge reads {CONFIG_SCHEMA_VERSION}); re-run `irforge convert`"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(unknown)}")
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        if d.get("rope_freq_factors") is not None:
            d["rope_freq_factors"] = tuple(float(x) for x in d["rope_freq_factors"])
        d["eos_token_ids"] = tuple(d.get("eos_token_ids") or ())
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"model config is incomplete: {e}") from e

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelConfig:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"model config is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise ConfigError("model config JSON must be an object")
        return cls.from_dict(d)

    # -- constructors from sources ----------------------------------------------------------
    @classmethod
    def from_hf_config(
        cls, hf: Mapping[str, Any], *, dtype: str | None = None, source: str = ""
    ) -> ModelConfig:
        """From a transformers `config.json` dict (Llama or Mistral; transformers 4 or 5)."""
        from irforge.facts.config_sources import hf_to_kwargs

        try:
            kwargs = hf_to_kwargs(hf)
            if kwargs.get("rope_scaling") is not None:
                kwargs["rope_scaling"] = RopeScaling(**kwargs["rope_scaling"])
            if dtype is not None:
                kwargs["dtype"] = dtype
            return cls(source=source, **kwargs)
        except (ValueError, TypeError, OverflowError, AttributeError) as e:
            # a value of the wrong type ("", null, a list, NaN where an integer goes)
            raise ConfigError(f"config.json: a hyperparameter has a wrong value ({e})") from None

    @classmethod
    def from_gguf_metadata(
        cls,
        kv: Mapping[str, Any],
        *,
        vocab_size: int | None = None,
        tie_word_embeddings: bool = False,
        rope_freq_factors: tuple[float, ...] | None = None,
        dtype: str = "f32",
        source: str = "",
    ) -> ModelConfig:
        """From GGUF key/values; llama.cpp GGUFs carry interleaved q/k rows."""
        from irforge.facts.config_sources import gguf_to_kwargs

        kwargs = gguf_to_kwargs(kv, vocab_size=vocab_size)
        return cls(
            tie_word_embeddings=tie_word_embeddings,
            rope_freq_factors=rope_freq_factors,
            dtype=dtype,
            source=source,
            **kwargs,
        )


def kv_page_elements(layers: int, kv_heads: int, block_seq_stride: int, head_dim: int) -> int:
    """One page: block_seq_stride tokens of K and V for every layer (DESIGN.md's ABI)."""
    return layers * 2 * kv_heads * block_seq_stride * head_dim
