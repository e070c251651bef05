"""ShardedPagedLlama: the model split over N devices by the tensor-parallel rules.

Each rank holds a PagedLlama-shaped slice: heads/N query and kv heads, ffn/N channels, its
own KV-cache slab; embeddings and norms are replicated. After attention and after the FFN
the ranks' partial outputs are summed (an all-reduce made of device transfers, as shark-ai
did), and the row-parallel output projection's partial logits are summed on device 0.
Eagerly, `transfer` is the identity; export passes IREE's transfer_to_logical_device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
from torch import nn

from irforge.errors import ConfigError
from irforge.facts.config import ModelConfig
from irforge.facts.sharding import check_tp, shard_name, split_dim
from irforge.model.kv_cache import DecodeKV, PagedKVCache, PrefillKV, VerifyKV
from irforge.model.llama import (
    RESIDUAL_DTYPE,
    Block,
    KVAccess,
    LayerRunner,
    RMSNorm,
    as_dtype,
    chunk_inputs,
    decode_inputs,
    last_positions,
    linear,
    prefill_inputs,
    run_in_place,
    stored_dtype,
)
from irforge.model.options import ModelOptions
from irforge.model.rope import inv_freq_tensor, inv_frequencies, rope_tables

Transfer = Callable[[torch.Tensor, int], torch.Tensor]


def _stay(t: torch.Tensor, device: int) -> torch.Tensor:
    return t


def local_config(config: ModelConfig, tp: int) -> ModelConfig:
    """One rank's share of the heads and FFN channels."""
    return config.replace(
        attention_head_count=config.attention_head_count // tp,
        attention_head_count_kv=config.attention_head_count_kv // tp,
        feed_forward_length=config.feed_forward_length // tp,
    )


class Rank(nn.Module):
    def __init__(self, config: ModelConfig, options: ModelOptions, rank: int, tp: int) -> None:
        super().__init__()
        local = local_config(config, tp)
        dtype = options.activation_torch_dtype(config)
        dim = config.embedding_length
        self.columns = slice(rank * dim // tp, (rank + 1) * dim // tp)  # of the output proj.
        self.tied = config.tie_word_embeddings
        stored = stored_dtype(config)
        self.token_embd = nn.Embedding(config.vocab_size, dim, dtype=stored)
        self.blk = nn.ModuleList(Block(local, i, options, dtype) for i in range(config.block_count))
        self.output_norm = RMSNorm(dim, config.rms_norm_eps, stored, dtype)
        if not self.tied:
            self.output = linear(config, dim // tp, config.vocab_size, dtype)
        self.kv_cache = PagedKVCache.for_model(local, options)

    def block(self, layer: int) -> Block:
        return cast(Block, self.blk[layer])

    def partial_logits(self, h: torch.Tensor) -> torch.Tensor:
        x = self.output_norm(h)[..., self.columns]  # [N, S, dim/tp]
        if self.tied:
            return x @ as_dtype(self.token_embd.weight[:, self.columns], x.dtype).T  # [N, S, vocab]
        return self.output(x)  # [N, S, vocab]


class ShardedPagedLlama(nn.Module):
    """PagedLlama over `tp` devices; caches are one slab per device."""

    def __init__(
        self,
        config: ModelConfig,
        options: ModelOptions | None = None,
        *,
        tp: int,
        transfer: Transfer = _stay,
    ) -> None:
        super().__init__()
        check_tp(config, tp)
        self.config, self.options, self.tp = config, options or ModelOptions(), tp
        self.ranks = nn.ModuleList(Rank(config, self.options, i, tp) for i in range(tp))
        self.transfer = transfer
        self.run_layers: LayerRunner = run_in_place
        self.inv_freq_values = tuple(inv_frequencies(config).tolist())

    def rank_list(self) -> list[Rank]:
        return [cast(Rank, r) for r in self.ranks]

    def _each(self, t: torch.Tensor) -> list[torch.Tensor]:
        return [self.transfer(t, i) for i in range(self.tp)]

    def _all_reduce(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        total = parts[0]
        for i in range(1, self.tp):
            total = total + self.transfer(parts[i], 0)
        return [total] + [self.transfer(total, i) for i in range(1, self.tp)]

    def _caches(self, caches: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        if isinstance(caches, torch.Tensor) or len(caches) != self.tp:
            raise ConfigError(f"a TP={self.tp} model needs {self.tp} cache slabs, one per device")
        return caches

    def prefill(
        self,
        tokens: torch.Tensor,
        start_pos: torch.Tensor,
        seq_lens: torch.Tensor,
        seq_block_ids: torch.Tensor,
        caches: Sequence[torch.Tensor],
        *,
        all_positions: bool = False,
    ) -> torch.Tensor:
        """As PagedLlama.prefill, with one cache slab per device; logits on device 0."""
        caches = self._caches(caches)
        ids, tokens_at, starts = (
            self._each(seq_block_ids),
            self._each(tokens),
            self._each(start_pos),
        )
        chunk = tokens.shape[1]
        kvs = [
            PrefillKV(r.kv_cache, c, i, p, chunk)
            for r, c, i, p in zip(self.rank_list(), caches, ids, starts, strict=True)
        ]
        inputs = [
            prefill_inputs(t, p, i, self.options)
            for t, p, i in zip(tokens_at, starts, ids, strict=True)
        ]
        positions, allowed = [p for p, _ in inputs], [a for _, a in inputs]
        keep = None if all_positions else self._each(seq_lens - start_pos)
        return self._forward(tokens_at, positions, allowed, kvs, keep)

    def decode(
        self,
        tokens: torch.Tensor,
        seq_lens: torch.Tensor,
        start_positions: torch.Tensor,
        seq_block_ids: torch.Tensor,
        caches: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """As PagedLlama.decode, with one cache slab per device; logits on device 0."""
        caches = self._caches(caches)
        ids, starts = self._each(seq_block_ids), self._each(start_positions)
        inputs = [
            decode_inputs(n, p, i, self.options)
            for n, p, i in zip(self._each(seq_lens), starts, ids, strict=True)
        ]
        positions, allowed = [p for p, _ in inputs], [a for _, a in inputs]
        kvs = [
            DecodeKV(r.kv_cache, c, i, p, a[:, 0])
            for r, c, i, p, a in zip(self.rank_list(), caches, ids, starts, allowed, strict=True)
        ]
        return self._forward(self._each(tokens), positions, allowed, kvs)

    def verify(
        self,
        tokens: torch.Tensor,
        start_positions: torch.Tensor,
        seq_block_ids: torch.Tensor,
        caches: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """As PagedLlama.verify, with one cache slab per device; logits on device 0."""
        caches = self._caches(caches)
        ids, tokens_at = self._each(seq_block_ids), self._each(tokens)
        starts = self._each(start_positions)
        inputs = [
            chunk_inputs(t, p, i, self.options)
            for t, p, i in zip(tokens_at, starts, ids, strict=True)
        ]
        positions, allowed = [p for p, _ in inputs], [a for _, a in inputs]
        kvs = [
            VerifyKV(r.kv_cache, c, i, p, tokens.shape[1])
            for r, c, i, p in zip(self.rank_list(), caches, ids, starts, strict=True)
        ]
        return self._forward(tokens_at, positions, allowed, kvs)

    @property
    def layer_count(self) -> int:
        return self.config.block_count

    def layer(
        self, index: int, *args: torch.Tensor, kvs: Sequence[KVAccess]
    ) -> tuple[torch.Tensor, ...]:
        """Decoder layer `index` on every rank: args are each rank's residual stream, then
        each rank's cos, sin and allowed keys; results, each rank's stream after the layer."""
        tp = self.tp
        h, cos, sin, allowed = (list(args[i * tp : (i + 1) * tp]) for i in range(4))
        blocks = [r.block(index) for r in self.rank_list()]
        parts = [
            b.attention_part(x, c, s, a, kv)
            for b, x, c, s, a, kv in zip(blocks, h, cos, sin, allowed, kvs, strict=True)
        ]
        # partial sums travel in the activations' dtype; the stream is float32 (Block)
        h = [x + y.to(RESIDUAL_DTYPE) for x, y in zip(h, self._all_reduce(parts), strict=True)]
        parts = [b.feed_forward_part(x) for b, x in zip(blocks, h, strict=True)]
        h = [x + y.to(RESIDUAL_DTYPE) for x, y in zip(h, self._all_reduce(parts), strict=True)]
        return tuple(h)

    def layer_parameters(self, index: int) -> list[tuple[str, nn.Parameter]]:
        """(name in this model, parameter) of every weight layer `index` reads, rank by rank."""
        return [
            (f"ranks.{i}.blk.{index}.{n}", p)
            for i, r in enumerate(self.rank_list())
            for n, p in r.block(index).named_parameters()
        ]

    def _forward(
        self,
        tokens: list[torch.Tensor],
        positions: list[torch.Tensor],
        allowed: list[torch.Tensor],
        kvs: Sequence[PrefillKV | DecodeKV],
        keep: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        h = [
            as_dtype(r.token_embd(t), RESIDUAL_DTYPE)
            for r, t in zip(self.rank_list(), tokens, strict=True)
        ]
        tables = [
            rope_tables(p, inv_freq_tensor(self.inv_freq_values, p.device)) for p in positions
        ]
        cos, sin = [c for c, _ in tables], [s for _, s in tables]
        h = list(self.run_layers(self, tuple(h), (*cos, *sin, *allowed), kvs))
        for kv in kvs:
            kv.flush()
        if keep is not None:  # each row's last position only, as PagedLlama.prefill
            h = [last_positions(x, n) for x, n in zip(h, keep, strict=True)]
        partial = [r.partial_logits(x) for r, x in zip(self.rank_list(), h, strict=True)]
        logits = partial[0]
        for i in range(1, self.tp):
            logits = logits + self.transfer(partial[i], 0)
        return logits  # [N, S or 1, vocab] on device 0


def sharded_name(module: str) -> tuple[int, str]:
    """(rank, archive name) of a ShardedPagedLlama parameter: `blk.0.attn_q.weight.shard.1`."""
    _, rank, base = module.split(".", 2)  # ranks.{i}.<canonical name>
    return int(rank), (shard_name(base, int(rank)) if split_dim(base) is not None else base)


def load_sharded(model: ShardedPagedLlama, tensors: Mapping[str, torch.Tensor]) -> None:
    """Assign weights from a sharded archive's names, or slice them from unsharded ones."""
    state = {}
    for module, param in model.named_parameters():
        rank, name = sharded_name(module)
        if name in tensors:
            value = tensors[name]
        else:
            base = name.rsplit(".shard.", 1)[0]
            dim = split_dim(base)
            if base not in tensors or dim is None:
                raise ConfigError(f"weights lack {name}")
            value = tensors[base].chunk(model.tp, dim=dim)[rank]
        if tuple(value.shape) != tuple(param.shape):
            raise ConfigError(
                f"{name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
            )
        state[module] = value.to(param.dtype).contiguous()
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
