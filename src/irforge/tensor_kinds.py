"""The one table of a Llama-family model's tensors: every name, shape and TP rule comes from it.

Each kind gives its canonical (GGUF-style) name, its Hugging Face name, the PagedLlama
parameter it loads into, its torch shape `[out, in]` from the config, and how tensor
parallelism splits it (shark-ai's layout: 0 = column-parallel, the output rows split, each
device owning some heads or FFN channels; 1 = row-parallel, the input columns split and the
partial products summed; None = replicated). `{i}` stands for the block index.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ModelConfig

COLUMN, ROW = 0, 1


def _q(c: ModelConfig) -> int:
    return c.attention_head_count * c.head_dim


def _kv(c: ModelConfig) -> int:
    return c.attention_head_count_kv * c.head_dim


@dataclass(frozen=True)
class TensorKind:
    canonical: str
    hf: str
    module: str
    shape: Callable[[ModelConfig], tuple[int, ...]]
    split_dim: int | None = None

    @property
    def per_block(self) -> bool:
        return "{i}" in self.canonical


KINDS: tuple[TensorKind, ...] = (
    TensorKind(
        "token_embd.weight",
        "model.embed_tokens.weight",
        "token_embd.weight",
        lambda c: (c.vocab_size, c.embedding_length),
    ),
    TensorKind(
        "output_norm.weight",
        "model.norm.weight",
        "output_norm.weight",
        lambda c: (c.embedding_length,),
    ),
    TensorKind(
        "output.weight",
        "lm_head.weight",
        "output.weight",
        lambda c: (c.vocab_size, c.embedding_length),
        ROW,
    ),
    TensorKind(
        "blk.{i}.attn_norm.weight",
        "model.layers.{i}.input_layernorm.weight",
        "blk.{i}.attn_norm.weight",
        lambda c: (c.embedding_length,),
    ),
    TensorKind(
        "blk.{i}.attn_q.weight",
        "model.layers.{i}.self_attn.q_proj.weight",
        "blk.{i}.attn.wq.weight",
        lambda c: (_q(c), c.embedding_length),
        COLUMN,
    ),
    TensorKind(
        "blk.{i}.attn_k.weight",
        "model.layers.{i}.self_attn.k_proj.weight",
        "blk.{i}.attn.wk.weight",
        lambda c: (_kv(c), c.embedding_length),
        COLUMN,
    ),
    TensorKind(
        "blk.{i}.attn_v.weight",
        "model.layers.{i}.self_attn.v_proj.weight",
        "blk.{i}.attn.wv.weight",
        lambda c: (_kv(c), c.embedding_length),
        COLUMN,
    ),
    TensorKind(
        "blk.{i}.attn_output.weight",
        "model.layers.{i}.self_attn.o_proj.weight",
        "blk.{i}.attn.wo.weight",
        lambda c: (c.embedding_length, _q(c)),
        ROW,
    ),
    TensorKind(
        "blk.{i}.ffn_norm.weight",
        "model.layers.{i}.post_attention_layernorm.weight",
        "blk.{i}.ffn_norm.weight",
        lambda c: (c.embedding_length,),
    ),
    TensorKind(
        "blk.{i}.ffn_gate.weight",
        "model.layers.{i}.mlp.gate_proj.weight",
        "blk.{i}.ffn.w_gate.weight",
        lambda c: (c.feed_forward_length, c.embedding_length),
        COLUMN,
    ),
    TensorKind(
        "blk.{i}.ffn_up.weight",
        "model.layers.{i}.mlp.up_proj.weight",
        "blk.{i}.ffn.w_up.weight",
        lambda c: (c.feed_forward_length, c.embedding_length),
        COLUMN,
    ),
    TensorKind(
        "blk.{i}.ffn_down.weight",
        "model.layers.{i}.mlp.down_proj.weight",
        "blk.{i}.ffn.w_down.weight",
        lambda c: (c.embedding_length, c.feed_forward_length),
        ROW,
    ),
)


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")


_BY_CANONICAL = [(_pattern(k.canonical), k) for k in KINDS]


def kind_of(canonical: str) -> tuple[TensorKind, str | None] | None:
    """The kind of a concrete canonical name and its block index, or None if it has none."""
    for pattern, kind in _BY_CANONICAL:
        m = pattern.match(canonical)
        if m:
            return kind, m.groupdict().get("i")
    return None


def _named(config: ModelConfig, name: Callable[[TensorKind], str]) -> dict[str, tuple[int, ...]]:
    """Model-level tensors, then block by block (the order checkpoints are written in)."""
    tied = config.tie_word_embeddings
    out = {
        name(k): k.shape(config)
        for k in KINDS
        if not k.per_block and not (tied and k.canonical == "output.weight")
    }
    for i in range(config.block_count):
        out.update({name(k).replace("{i}", str(i)): k.shape(config) for k in KINDS if k.per_block})
    return out


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> torch shape of every weight the config implies (tied: no output)."""
    return _named(config, lambda k: k.canonical)


def hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The same tensors under their Hugging Face names (for checkpoints made from a config)."""
    return _named(config, lambda k: k.hf)
