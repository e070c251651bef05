"""The one table of a Llama-family model's tensors: every name, shape and TP rule comes from it.

Each kind gives its canonical (GGUF-style) name, which is also the PagedLlama parameter it
loads into, its Hugging Face name, its torch shape `[out, in]` from the config, and how tensor
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
    from irforge.facts.config import ModelConfig

COLUMN, ROW = 0, 1


def _q(c: ModelConfig) -> int:
    return c.attention_head_count * c.head_dim


def _kv(c: ModelConfig) -> int:
    return c.attention_head_count_kv * c.head_dim


@dataclass(frozen=True)
class TensorKind:
    canonical: str
    hf: str
    shape: Callable[[ModelConfig], tuple[int, ...]]
    split_dim: int | None = None
    # A linear layer's weight [out, in]: what weight-only quantization stores quantized.
    linear: bool = False

    @property
    def per_block(self) -> bool:
        return "{i}" in self.canonical


KINDS: tuple[TensorKind, ...] = (
    TensorKind(
        "token_embd.weight",
        "model.embed_tokens.weight",
        lambda c: (c.vocab_size, c.embedding_length),
    ),
    TensorKind(
        "output_norm.weight",
        "model.norm.weight",
        lambda c: (c.embedding_length,),
    ),
    TensorKind(
        "output.weight",
        "lm_head.weight",
        lambda c: (c.vocab_size, c.embedding_length),
        ROW,
        linear=True,
    ),
    TensorKind(
        "blk.{i}.attn_norm.weight",
        "model.layers.{i}.input_layernorm.weight",
        lambda c: (c.embedding_length,),
    ),
    TensorKind(
        "blk.{i}.attn_q.weight",
        "model.layers.{i}.self_attn.q_proj.weight",
        lambda c: (_q(c), c.embedding_length),
        COLUMN,
        linear=True,
    ),
    TensorKind(
        "blk.{i}.attn_k.weight",
        "model.layers.{i}.self_attn.k_proj.weight",
        lambda c: (_kv(c), c.embedding_length),
        COLUMN,
        linear=True,
    ),
    TensorKind(
        "blk.{i}.attn_v.weight",
        "model.layers.{i}.self_attn.v_proj.weight",
        lambda c: (_kv(c), c.embedding_length),
        COLUMN,
        linear=True,
    ),
    TensorKind(
        "blk.{i}.attn_output.weight",
        "model.layers.{i}.self_attn.o_proj.weight",
        lambda c: (c.embedding_length, _q(c)),
        ROW,
        linear=True,
    ),
    TensorKind(
        "blk.{i}.ffn_norm.weight",
        "model.layers.{i}.post_attention_layernorm.weight",
        lambda c: (c.embedding_length,),
    ),
    TensorKind(
        "blk.{i}.ffn_gate.weight",
        "model.layers.{i}.mlp.gate_proj.weight",
        lambda c: (c.feed_forward_length, c.embedding_length),
        COLUMN,
        linear=True,
    ),
    TensorKind(
        "blk.{i}.ffn_up.weight",
        "model.layers.{i}.mlp.up_proj.weight",
        lambda c: (c.feed_forward_length, c.embedding_length),
        COLUMN,
        linear=True,
    ),
    TensorKind(
        "blk.{i}.ffn_down.weight",
        "model.layers.{i}.mlp.down_proj.weight",
        lambda c: (c.embedding_length, c.feed_forward_length),
        ROW,
        linear=True,
    ),
)


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")


def _scale_kind(k: TensorKind) -> TensorKind:
    """The per-output-channel scale of a quantized linear kind: its rows, so it splits with
    a column-parallel weight and is replicated beside a row-parallel one."""
    from irforge.facts.quantization import SCALE_SUFFIX

    rows = k.shape
    return TensorKind(
        k.canonical + SCALE_SUFFIX,
        k.hf + SCALE_SUFFIX,
        lambda c: (rows(c)[0],),
        COLUMN if k.split_dim == COLUMN else None,
    )


def _block_scale_kind(k: TensorKind) -> TensorKind:
    """The per-block scales [out, in / block] of a block-quantized linear kind: split as
    the weight is (a row-parallel weight's columns take their blocks with them)."""
    from irforge.facts.quantization import BLOCK_SCALE_SUFFIX, scheme

    def shape(c: ModelConfig) -> tuple[int, ...]:
        out, cols = k.shape(c)
        block = scheme(c.quantization).block if c.quantization else None
        return (out, cols // (block or cols))

    return TensorKind(
        k.canonical + BLOCK_SCALE_SUFFIX,
        k.hf + BLOCK_SCALE_SUFFIX,
        shape,
        k.split_dim,
    )


SCALE_KINDS: tuple[TensorKind, ...] = tuple(_scale_kind(k) for k in KINDS if k.linear)
BLOCK_SCALE_KINDS: tuple[TensorKind, ...] = tuple(_block_scale_kind(k) for k in KINDS if k.linear)
ALL_KINDS = KINDS + SCALE_KINDS + BLOCK_SCALE_KINDS


def kinds_for(config: ModelConfig) -> tuple[TensorKind, ...]:
    """The kinds a config's archive holds: the weights, and its scheme's scales if any."""
    if config.quantization is None:
        return KINDS
    from irforge.facts.quantization import scheme

    return KINDS + (SCALE_KINDS if scheme(config.quantization).block is None else BLOCK_SCALE_KINDS)


_BY_CANONICAL = [(_pattern(k.canonical), k) for k in ALL_KINDS]


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
    kinds = kinds_for(config)
    out = {
        name(k): k.shape(config)
        for k in kinds
        if not k.per_block and not (tied and k.canonical.startswith("output.weight"))
    }
    for i in range(config.block_count):
        out.update({name(k).replace("{i}", str(i)): k.shape(config) for k in kinds if k.per_block})
    return out


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> torch shape of every weight the config implies (tied: no output)."""
    return _named(config, lambda k: k.canonical)


def hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The same tensors under their Hugging Face names (for checkpoints made from a config)."""
    return _named(config, lambda k: k.hf)
