"""The one table between Hugging Face tensor names and irforge's canonical (GGUF-style) names."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from ..config import ModelConfig

# HF name pattern -> canonical name; `{i}` is the block index.
HF_TO_CANONICAL: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}

# HF tensors that carry no weights irforge needs (recomputed from the config).
HF_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def _compile(table: dict[str, str]) -> list[tuple[re.Pattern[str], str]]:
    out = []
    for src, dst in table.items():
        pattern = re.escape(src).replace(re.escape("{i}"), r"(?P<i>\d+)")
        out.append((re.compile(f"^{pattern}$"), dst))
    return out


_HF_RULES = _compile(HF_TO_CANONICAL)
_CANONICAL_RULES = _compile({v: k for k, v in HF_TO_CANONICAL.items()})


def _lookup(rules: list[tuple[re.Pattern[str], str]], name: str) -> str | None:
    for pattern, dst in rules:
        m = pattern.match(name)
        if m:
            return dst.replace("{i}", m.group("i")) if "i" in pattern.groupindex else dst
    return None


def hf_to_canonical(name: str) -> str | None:
    """Canonical name of an HF tensor, or None when the table does not know it."""
    return _lookup(_HF_RULES, name)


def canonical_to_hf(name: str) -> str | None:
    """HF name of a canonical tensor, or None when the table does not know it."""
    return _lookup(_CANONICAL_RULES, name)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> torch shape `[out, in]` of every weight a Llama-family model has."""
    hidden, hd, ffn = config.embedding_length, config.head_dim, config.feed_forward_length
    q, kv = config.attention_head_count * hd, config.attention_head_count_kv * hd
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (config.vocab_size, hidden),
        "output_norm.weight": (hidden,),
    }
    if not config.tie_word_embeddings:
        shapes["output.weight"] = (config.vocab_size, hidden)
    for i in range(config.block_count):
        shapes.update(
            {
                f"blk.{i}.attn_norm.weight": (hidden,),
                f"blk.{i}.attn_q.weight": (q, hidden),
                f"blk.{i}.attn_k.weight": (kv, hidden),
                f"blk.{i}.attn_v.weight": (kv, hidden),
                f"blk.{i}.attn_output.weight": (hidden, q),
                f"blk.{i}.ffn_norm.weight": (hidden,),
                f"blk.{i}.ffn_gate.weight": (ffn, hidden),
                f"blk.{i}.ffn_up.weight": (ffn, hidden),
                f"blk.{i}.ffn_down.weight": (hidden, ffn),
            }
        )
    return shapes


def check_tensors(config: ModelConfig, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Every weight the config implies is present with the shape it implies.

    Raises:
        InputError: naming the first missing or mis-shaped tensor.
    """
    for name, want in expected_shapes(config).items():
        got = shapes.get(name)
        if got is None:
            raise InputError(f"{where}: tensor {name!r} is missing (the config implies it)")
        if tuple(got) != want:
            raise InputError(
                f"{where}: tensor {name!r} has shape {list(got)}, the config implies {list(want)}"
            )
