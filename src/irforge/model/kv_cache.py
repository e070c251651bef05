"""The paged KV cache: views of a device's page slab, and prefill/decode reads and writes.

A slab is one tensor `[pages, page_elements]` per device (the exported ABI, DESIGN.md). Its
logical view is `[pages, layers, 2 (K, V), kv_heads, block_seq_stride, head_dim]`: a page holds
`block_seq_stride` consecutive positions of one sequence for every layer. Reads gather a
sequence's pages; writes go through `index_put_` on that view, so they stay in place on the
caller's tensor. This form exports with iree-turbine, compiles for llvm-cpu and gfx942, and
the CPU module updates the caller's slab in place with eager PyTorch's values.

A call writes the slab once, after every layer has read it (`flush`): one scatter of all
layers' new K/V. Written per layer, each layer's scatter follows the previous layer's reads of
the same slab, and IREE keeps both versions: it copied the whole cache once per layer, so a
decode step cost more the larger the cache (1B-shaped, 16 layers: +600 ms a step at 1 GiB).
Decode attends to the pages as they were before the call plus this step's own K/V, put in at
its position.

Every listed page is written, padding positions included: entries of `seq_block_ids` that a
sequence does not own must name a scratch page no live sequence uses (the runtime reserves one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from irforge.errors import ConfigError
from irforge.facts.config import ModelConfig, kv_page_elements
from irforge.model.options import ModelOptions


def widen(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in dtype; fp8 reaches f16 through f32, as llvm-cpu (IREE 3.13) has no f8 -> f16
    extension ("failed to legalize arith.extf ... vector<16xf8E4M3FN> -> vector<16xf16>";
    f8 -> bf16 and f8 -> f32 compile, and gfx942 compiles either)."""
    if t.dtype.itemsize == 1 and t.dtype.is_floating_point and dtype == torch.float16:
        t = t.to(torch.float32)
    return t.to(dtype)


@dataclass(frozen=True)
class PagedKVCache:
    """Page layout of one device's slab; the methods read and write a given slab."""

    layers: int
    kv_heads: int
    block_seq_stride: int
    head_dim: int
    dtype: torch.dtype

    @classmethod
    def for_model(cls, config: ModelConfig, options: ModelOptions) -> PagedKVCache:
        return cls(
            layers=config.block_count,
            kv_heads=config.attention_head_count_kv,
            block_seq_stride=options.block_seq_stride,
            head_dim=config.head_dim,
            dtype=options.kv_cache_torch_dtype(config),
        )

    @property
    def page_elements(self) -> int:
        return kv_page_elements(self.layers, self.kv_heads, self.block_seq_stride, self.head_dim)

    def allocate(
        self, page_count: int, *, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """A zeroed slab [page_count, page_elements]."""
        return torch.zeros(page_count, self.page_elements, dtype=self.dtype, device=device)

    def _stored(self, kv: torch.Tensor) -> torch.Tensor:
        """kv in the cache's dtype; fp8 saturates, since torch casts what it cannot hold to NaN."""
        if self.dtype.itemsize == 1:
            most = torch.finfo(self.dtype).max
            kv = kv.float().clamp(-most, most)
        return kv.to(self.dtype)

    def pages(self, slab: torch.Tensor) -> torch.Tensor:
        """The 6-D view [pages, layers, 2, kv_heads, stride, head_dim] sharing slab's storage."""
        if slab.dim() != 2 or slab.shape[1] != self.page_elements:
            raise ConfigError(
                f"KV cache slab has shape {tuple(slab.shape)}, expected "
                f"[pages, {self.page_elements}] for this model and block_seq_stride"
            )
        return slab.view(-1, self.layers, 2, self.kv_heads, self.block_seq_stride, self.head_dim)

    def write_pages(
        self,
        slab: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        seq_block_ids: torch.Tensor,
    ) -> None:
        """Store every layer's k, v [L, N, B·stride, kv_heads, D] into pages seq_block_ids
        [N, B]."""
        kv = torch.stack([k, v], dim=1).permute(2, 3, 0, 1, 4, 5)  # [N, B·stride, L, 2, KV, D]
        kv = kv.unflatten(1, (-1, self.block_seq_stride))  # [N, B, stride, L, 2, KV, D]
        kv = kv.permute(0, 1, 3, 4, 5, 2, 6).flatten(0, 1)  # [N·B, L, 2, KV, stride, D]
        # whole pages: one index over the leading dim, one scatter into the slab
        self.pages(slab).index_put_((seq_block_ids.flatten(),), self._stored(kv))

    def write_token(
        self,
        slab: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        seq_block_ids: torch.Tensor,
        positions: torch.Tensor,
    ) -> None:
        """Store one position per sequence for every layer: k, v [L, N, kv_heads, D] at [N].
        Rows may repeat a sequence (its seq_block_ids row repeated) at other positions."""
        n, dev = positions.shape[0], positions.device
        block = torch.div(positions, self.block_seq_stride, rounding_mode="floor")  # [N]
        page = seq_block_ids.gather(1, block.unsqueeze(1)).view(n, 1, 1, 1)
        offset = torch.remainder(positions, self.block_seq_stride).view(n, 1, 1, 1)
        layer = torch.arange(self.layers, device=dev).view(1, -1, 1, 1)
        part = torch.arange(2, device=dev).view(1, 1, 2, 1)  # K, V
        head = torch.arange(self.kv_heads, device=dev).view(1, 1, 1, -1)
        kv = torch.stack([k, v], dim=1).permute(2, 0, 1, 3, 4)  # [N, L, 2, KV, D]
        # indices broadcast to [N, L, 2, KV]; kv is [N, L, 2, KV, D]
        self.pages(slab).index_put_((page, layer, part, head, offset), self._stored(kv))

    def gather(
        self,
        slab: torch.Tensor,
        layer: int | torch.Tensor,
        seq_block_ids: torch.Tensor,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V [N, kv_heads, B·stride, D] of one layer over the pages seq_block_ids [N, B];
        `layer` may be a 0-d tensor (a block function shared by every layer)."""
        # Gather rows of the [pages·layers, ...] view. The same read written as
        # `pages[:, layer][ids]` exports too, but IREE 3.9 (llvm-cpu) computes it wrongly.
        pages = self.pages(slab).flatten(0, 1)  # [pages·layers, 2, KV, stride, D]
        rows = seq_block_ids * self.layers + layer  # [N, B]: this layer's part of each page
        kv = pages[rows]  # [N, B, 2, KV, stride, D]
        kv = kv.permute(2, 0, 3, 1, 4, 5).flatten(3, 4)  # [2, N, KV, B·stride, D]
        return widen(kv[0], dtype), widen(kv[1], dtype)


class _NewKV:
    """The K/V a call computes, held until flush writes them once (after every layer's read):
    layer by layer (`record`, `keep`) or all layers stacked at once (`keep_all`)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    stacked: tuple[torch.Tensor, torch.Tensor] | None

    def kept(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def record(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep a layer's k, v for flush."""
        self.keep(*self.kept(k, v))

    def keep(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Hold a layer's `kept` k, v until flush."""
        self.k.append(k)
        self.v.append(v)

    def keep_all(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Hold every layer's `kept` k, v at once, stacked [L, ...] (instead of `keep`)."""
        self.stacked = (k, v)

    def _all_kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stacked is not None:
            return self.stacked
        return torch.stack(self.k), torch.stack(self.v)


class PrefillKV(_NewKV):
    """Prefill's cache access for a chunk at positions [start_pos, start_pos + S) of each row:
    attend to the pages before the chunk plus the chunk's own K/V; store the chunk's pages at
    flush. With start_pos 0 it is a whole prompt's prefill (the gathered pages are all replaced).

    start_pos must be a multiple of block_seq_stride (chunks and shared prefixes are whole
    pages), and seq_block_ids [N, B] must cover the chunk: B >= start_pos / stride + S / stride.
    """

    def __init__(
        self,
        cache: PagedKVCache,
        slab: torch.Tensor,
        seq_block_ids: torch.Tensor,
        start_pos: torch.Tensor,
        chunk: int,
    ):
        self.cache, self.slab, self.seq_block_ids = cache, slab, seq_block_ids
        n, stride = seq_block_ids.shape[0], cache.block_seq_stride
        sk = seq_block_ids.shape[1] * stride
        slots = torch.arange(sk, device=start_pos.device).view(1, -1)  # [1, Sk]
        offset = slots - start_pos.view(n, 1)  # slot's position within the chunk
        # logical_and, not `&`: torch-mlir has no lowering for aten.__and__ on i1 tensors
        self.in_chunk = torch.logical_and(offset >= 0, offset < chunk).view(n, 1, sk, 1)
        # Slots past the chunk hold stale or garbage values; masking the scores is not enough,
        # as softmax's exact 0 times NaN is still NaN.
        self.before_end = (offset < chunk).view(n, 1, sk, 1)
        self.chunk_index = offset.clamp(0, chunk - 1).view(n, 1, sk, 1)
        first = torch.div(start_pos, stride, rounding_mode="floor").view(n, 1)
        pages = first + torch.arange(chunk // stride, device=start_pos.device).view(1, -1)
        self.chunk_pages = seq_block_ids.gather(1, pages.clamp(max=seq_block_ids.shape[1] - 1))
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.stacked: tuple[torch.Tensor, torch.Tensor] | None = None

    # What a layer's read takes: an exported block function receives these as arguments.
    STATE = ("slab", "seq_block_ids", "in_chunk", "before_end", "chunk_index")

    def __call__(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [N, S, KV, D] -> keys, values [N, KV, B·stride, D] (the chunk put in)."""
        self.record(k, v)
        return self.read(layer, k, v)

    def kept(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What flush writes of a layer's k, v: all of them."""
        return k, v

    def read(
        self, layer: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values layer `layer` attends over; reads the state only."""
        keys, values = self.cache.gather(self.slab, layer, self.seq_block_ids, k.dtype)
        index = self.chunk_index.expand(-1, keys.shape[1], -1, keys.shape[3])
        keys = torch.where(self.in_chunk, k.transpose(1, 2).gather(2, index), keys)
        values = torch.where(self.in_chunk, v.transpose(1, 2).gather(2, index), values)
        return torch.where(self.before_end, keys, 0), torch.where(self.before_end, values, 0)

    def flush(self) -> None:
        """Write every layer's K/V of the chunk (call once, after the last layer)."""
        self.cache.write_pages(self.slab, *self._all_kept(), self.chunk_pages)


class DecodeKV(_NewKV):
    """Decode's cache access: read the sequence's pages with the new token's K/V put in at its
    position; store that K/V at flush."""

    def __init__(
        self,
        cache: PagedKVCache,
        slab: torch.Tensor,
        seq_block_ids: torch.Tensor,
        positions: torch.Tensor,
        key_valid: torch.Tensor,
    ):
        self.cache, self.slab, self.seq_block_ids = cache, slab, seq_block_ids
        self.positions = positions  # [N]
        n, sk = key_valid.shape[0], seq_block_ids.shape[1] * cache.block_seq_stride
        self.key_valid = key_valid.view(n, 1, -1, 1)  # [N, 1, Sk, 1]
        slots = torch.arange(sk, device=positions.device).view(1, -1)
        self.is_new = (slots == positions.view(n, 1)).view(n, 1, sk, 1)  # [N, 1, Sk, 1]
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.stacked: tuple[torch.Tensor, torch.Tensor] | None = None

    STATE = ("slab", "seq_block_ids", "key_valid", "is_new")  # as PrefillKV.STATE

    def __call__(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [N, 1, KV, D] -> keys, values [N, KV, B·stride, D] (the new token included)."""
        self.record(k, v)
        return self.read(layer, k, v)

    def kept(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What flush writes of a layer's k, v [N, 1, KV, D]: [N, KV, D]."""
        return k[:, 0], v[:, 0]

    def read(
        self, layer: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values layer `layer` attends over; reads the state only."""
        keys, values = self.cache.gather(self.slab, layer, self.seq_block_ids, k.dtype)
        keys = torch.where(self.is_new, k.transpose(1, 2), keys)
        values = torch.where(self.is_new, v.transpose(1, 2), values)
        # Slots past the sequence may hold stale or garbage values; masking the scores is not
        # enough, as softmax's exact 0 times NaN is still NaN.
        return torch.where(self.key_valid, keys, 0), torch.where(self.key_valid, values, 0)

    def flush(self) -> None:
        """Write the new token's K/V of every layer (call once, after the last layer)."""
        self.cache.write_token(self.slab, *self._all_kept(), self.seq_block_ids, self.positions)


class VerifyKV(PrefillKV):
    """Speculative decoding's verify step: S consecutive positions of each row from any
    position `start` (a row's last token and the tokens proposed after it). Reads as a
    prefill chunk does (the pages with the S new K/V put in at their positions), but start
    need not be a page boundary, and flush writes the S positions one by one, so a page the
    chunk shares with earlier positions keeps them.

    seq_block_ids [N, B] must list pages up to position start + S - 1; pages past what a row
    owns may be the scratch page (positions written there are padding)."""

    def __init__(
        self,
        cache: PagedKVCache,
        slab: torch.Tensor,
        seq_block_ids: torch.Tensor,
        start: torch.Tensor,
        chunk: int,
    ):
        self.cache, self.slab, self.seq_block_ids = cache, slab, seq_block_ids
        n, sk = seq_block_ids.shape[0], seq_block_ids.shape[1] * cache.block_seq_stride
        offset = torch.arange(sk, device=start.device).view(1, -1) - start.view(n, 1)
        self.in_chunk = torch.logical_and(offset >= 0, offset < chunk).view(n, 1, sk, 1)
        self.before_end = (offset < chunk).view(n, 1, sk, 1)
        self.chunk_index = offset.clamp(0, chunk - 1).view(n, 1, sk, 1)
        self.positions = start.view(n, 1) + torch.arange(chunk, device=start.device).view(1, -1)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.stacked: tuple[torch.Tensor, torch.Tensor] | None = None

    def flush(self) -> None:
        """Write every layer's K/V of the S positions (call once, after the last layer)."""
        k, v = self._all_kept()  # [L, N, S, KV, D]
        n, s = self.positions.shape
        rows = self.seq_block_ids.unsqueeze(1).expand(n, s, -1).reshape(n * s, -1)
        self.cache.write_token(
            self.slab, k.flatten(1, 2), v.flatten(1, 2), rows, self.positions.reshape(n * s)
        )


def state_of(kv: PrefillKV | DecodeKV) -> tuple[torch.Tensor, ...]:
    """The tensors a layer's `read` takes (kind.STATE), in order."""
    return tuple(getattr(kv, name) for name in kv.STATE)


def with_state(
    kind: type[PrefillKV] | type[DecodeKV], cache: PagedKVCache, state: Sequence[torch.Tensor]
) -> PrefillKV | DecodeKV:
    """A `kind` that can `read` from given STATE tensors (a block function's arguments) and
    records nothing: no slab write follows it."""
    kv = kind.__new__(kind)
    kv.cache = cache
    for name, t in zip(kind.STATE, state, strict=True):
        setattr(kv, name, t)
    return kv
