"""Reading ModelConfig keyword arguments out of HF config.json dicts and GGUF metadata."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from irforge.errors import ConfigError, UnsupportedModelError
from irforge.formats.dtypes import BY_NAME, FLOAT_DTYPES

HF_MODEL_TYPES = {"llama": "llama", "mistral": "llama"}
# config.json's torch_dtype, as the dtype table names it
HF_DTYPES = {BY_NAME[name].turbine: name for name in FLOAT_DTYPES}


def _require(d: Mapping[str, Any], key: str, where: str) -> Any:
    value = d.get(key)
    if value is None:
        raise ConfigError(f"{where} lacks required hyperparameter {key!r}")
    return value


def _int(value: Any, key: str, where: str) -> int:
    """An integer hyperparameter as written: not a string, a bool or a fraction."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
    return int(value)


def _require_int(d: Mapping[str, Any], key: str, where: str) -> int:
    return _int(_require(d, key, where), key, where)


def _hf_rope(hf: Mapping[str, Any]) -> tuple[float, Any]:
    """(rope_theta, RopeScaling's fields | None) from `rope_scaling` (v4) or `rope_parameters`
    (v5); ModelConfig makes the RopeScaling, so this module needs nothing from config.py."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or params
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type in (None, "default"):
        return float(theta), None
    if rope_type != "llama3":
        raise UnsupportedModelError(
            f"config.json rope scaling type {rope_type!r} is not supported (supported: llama3)"
        )
    try:
        return float(theta), {
            "factor": float(scaling["factor"]),
            "low_freq_factor": float(scaling["low_freq_factor"]),
            "high_freq_factor": float(scaling["high_freq_factor"]),
            "original_context_length": int(scaling["original_max_position_embeddings"]),
        }
    except KeyError as e:
        raise ConfigError(f"config.json llama3 rope scaling lacks {e.args[0]!r}") from e


def hf_to_kwargs(hf: Mapping[str, Any]) -> dict[str, Any]:
    where = "config.json"
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{where} model_type {model_type!r} is not supported "
            f"(supported: {', '.join(HF_MODEL_TYPES)})"
        )
    hidden = _require_int(hf, "hidden_size", where)
    heads = _require_int(hf, "num_attention_heads", where)
    context = _require_int(hf, "max_position_embeddings", where)
    window = hf.get("sliding_window")
    if window is not None and int(window) < context:
        raise UnsupportedModelError(
            f"{where} sets sliding_window={window} below max_position_embeddings={context}; "
            "sliding-window attention is not supported"
        )
    theta, scaling = _hf_rope(hf)
    eos = hf.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    dtype = HF_DTYPES.get(str(hf.get("torch_dtype") or hf.get("dtype") or "float32"), "f32")
    return dict(
        architecture=HF_MODEL_TYPES[model_type],
        vocab_size=_require_int(hf, "vocab_size", where),
        context_length=context,
        embedding_length=hidden,
        block_count=_require_int(hf, "num_hidden_layers", where),
        feed_forward_length=_require_int(hf, "intermediate_size", where),
        attention_head_count=heads,
        attention_head_count_kv=_int(
            hf.get("num_key_value_heads") or heads, "num_key_value_heads", where
        ),
        head_dim=_int(hf.get("head_dim") or hidden // max(heads, 1), "head_dim", where),
        rms_norm_eps=float(_require(hf, "rms_norm_eps", where)),
        rope_freq_base=theta,
        rope_scaling=scaling,
        rope_interleaved=False,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos_ids,
        dtype=dtype,
    )


def gguf_to_kwargs(kv: Mapping[str, Any], *, vocab_size: int | None) -> dict[str, Any]:
    where = "GGUF metadata"
    arch = kv.get("general.architecture")
    if arch != "llama":
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported (supported: llama)"
        )
    scaling_type = kv.get(f"{arch}.rope.scaling.type", "none")
    if scaling_type not in ("none", None):
        raise UnsupportedModelError(
            f"GGUF rope scaling type {scaling_type!r} is not supported "
            "(Llama-3.1 scaling comes as the rope_freqs.weight tensor)"
        )
    hidden = _require_int(kv, f"{arch}.embedding_length", where)
    heads = _require_int(kv, f"{arch}.attention.head_count", where)
    head_dim = kv.get(f"{arch}.attention.key_length") or kv.get(f"{arch}.rope.dimension_count")
    vocab = kv.get(f"{arch}.vocab_size") or vocab_size
    tokens = kv.get("tokenizer.ggml.tokens")
    if vocab is None and tokens is not None:
        vocab = len(tokens)
    if vocab is None:
        raise ConfigError(f"{where} lacks {arch}.vocab_size and token_embd.weight is missing")
    eos = kv.get("tokenizer.ggml.eos_token_id")
    return dict(
        architecture=arch,
        vocab_size=int(vocab),
        context_length=_require_int(kv, f"{arch}.context_length", where),
        embedding_length=hidden,
        block_count=_require_int(kv, f"{arch}.block_count", where),
        feed_forward_length=_require_int(kv, f"{arch}.feed_forward_length", where),
        attention_head_count=heads,
        attention_head_count_kv=int(kv.get(f"{arch}.attention.head_count_kv") or heads),
        head_dim=int(head_dim or hidden // heads),
        rms_norm_eps=float(_require(kv, f"{arch}.attention.layer_norm_rms_epsilon", where)),
        rope_freq_base=float(kv.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_interleaved=True,
        bos_token_id=kv.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
    )
