"""PagedLlama: the Llama-family decoder (Llama 3.x, Mistral, Mistral-Nemo) over a paged KV cache.

`prefill` and `decode` take the exported ABI's plain tensors (DESIGN.md), so the same module
runs eagerly in tests and is traced by export: no Python branch reads a tensor's value, and
batch size and page count may be symbolic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from irforge.artifacts.abi import SCORE_TOP
from irforge.errors import ConfigError
from irforge.facts.config import ModelConfig
from irforge.facts.quantization import LIMB, SCALE_DTYPE, Scheme, scheme
from irforge.formats.dtypes import BY_NAME
from irforge.model.attention import attend, decode_mask
from irforge.model.kv_cache import DecodeKV, PagedKVCache, PrefillKV, VerifyKV, widen
from irforge.model.options import ModelOptions
from irforge.model.rope import apply_rope, inv_freq_tensor, inv_frequencies, rope_tables
from irforge.model.weights import load_archive, load_canonical
from irforge.model.widening import WIDENED, widening_linear

# What a Block calls to store this step's K/V and get the keys/values to attend over.
KVAccess = PrefillKV | DecodeKV  # VerifyKV is a PrefillKV


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in `dtype`; no op at all (nothing traced) when it already is."""
    return t if t.dtype == dtype else t.to(dtype)


class Linear(nn.Linear):
    """nn.Linear over the rows flattened to 2-D: [N, S, K] @ W.T as one [N·S, K] matmul.

    The weight is declared in the archive's dtype (a compiled program reads the stored bytes
    as the dtype it declares) and cast to the activations' inside the program if they differ;
    f32 rows take a half-precision weight widened inside the matmul (widening.py).

    Traced on [1, 1, K] (decode_bs1, and prefill_bs1), nn.Linear lowers to a batch_matmul of
    batch 1 that IREE's llvm-cpu code runs at half the speed of the same rows as a plain
    matmul (1B-shaped f32 decode: bs1 546 ms a step, bs4 240 ms).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if x.dtype == torch.float32 and self.weight.dtype in WIDENED:
            # f32 rows, half-precision weight: widened inside the matmul (widening.py)
            out = widening_linear(rows, self.weight)
        else:
            out = F.linear(rows, as_dtype(self.weight, x.dtype))
        return out.view(*x.shape[:-1], -1)


class QuantLinear(nn.Module):
    """A linear layer whose weight is stored quantized (quantization.py: int8 or fp8 rows and
    f32 scales, per output channel or per block of a row).

    `int8` and `w8a8` multiply integers (`torch._int_mm`, which IREE imports as an i8 x i8 ->
    i32 matmul and packs for its s8s8s32 ukernel on the CPU): `w8a8` rounds each row of
    activations to int8, `int8` to 16 bits in two int8 limbs (quantization.py); the int32
    sums are exact and are scaled in f32, so nothing overflows.

    The other schemes (fp8, GGUF's blocks) rebuild the weight in the activation dtype inside
    the program: an elementwise op on the matmul's operand, which IREE fuses into the matmul's
    dispatch, so the step reads the stored bytes; but on llvm-cpu that fused matmul is
    compute-bound (quantization.py). Scaling the
    product instead of the weight was 20% faster there but can overflow f16 (|x . w| up to
    127x larger before the scale), so it is not done.
    """

    def __init__(self, in_features: int, out_features: int, scheme: Scheme, dtype: torch.dtype):
        super().__init__()
        self.activations = scheme.activations
        self.activation_qmax = scheme.activation_qmax
        store = BY_NAME[scheme.storage].torch
        self.block = scheme.block
        self.weight = nn.Parameter(
            torch.zeros(out_features, in_features, dtype=store), requires_grad=False
        )
        scales = (
            (out_features,) if self.block is None else (out_features, in_features // self.block)
        )
        scale = nn.Parameter(
            torch.ones(scales, dtype=BY_NAME[SCALE_DTYPE].torch), requires_grad=False
        )
        # the parameter's name is the archive's suffix (weight_scale / weight_block_scale)
        self.scale_attr = scheme.scale_name("weight")
        self.register_parameter(self.scale_attr, scale)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if self.activations is not None:
            return self._integer(rows).view(*x.shape[:-1], -1)
        scale = getattr(self, self.scale_attr).to(self.dtype)
        if self.block is None:
            w = widen(self.weight, self.dtype) * scale[:, None]
        else:
            out, cols = self.weight.shape
            blocks = widen(self.weight.view(out, cols // self.block, self.block), self.dtype)
            w = (blocks * scale[..., None]).view(out, cols)
        return F.linear(rows, w).view(*x.shape[:-1], -1)

    def _integer(self, rows: torch.Tensor) -> torch.Tensor:
        xf = rows.float()
        top = self.activation_qmax
        assert top is not None
        # a row of zeros (padding) keeps a finite scale and quantizes to zeros
        step = xf.abs().amax(-1, keepdim=True).clamp(min=1e-30) / top
        q = torch.round(xf / step).clamp(-top, top)
        if self.activations == "i8":
            acc = torch._int_mm(q.to(torch.int8), self.weight.t()).float()
        else:
            # q = LIMB * hi + lo; both limbs' rows in one matmul, so the weight is read once
            hi = torch.floor((q + LIMB // 2) / LIMB)
            limbs = torch.stack([hi, q - LIMB * hi]).to(torch.int8)
            n, k = rows.shape
            both = torch._int_mm(limbs.view(2 * n, k), self.weight.t()).float().view(2, n, -1)
            acc = both[0] * LIMB + both[1]
        return (acc * step * getattr(self, self.scale_attr)).to(self.dtype)


# The residual stream (each block's input and output) stays float32 whatever the activations:
# half-precision layers add their outputs to it, each rounded once. In bf16 a bf16 stream
# cost SmolLM2-135M 1.09e-3 nats of mean KL divergence from f32, a float32 one 7.6e-4
# (bench/real_model.py); the stream is [tokens, hidden], small beside any weight.
RESIDUAL_DTYPE = torch.float32


def stored_dtype(config: ModelConfig) -> torch.dtype:
    """The dtype of an archive's float weights (convert writes them all in config.dtype).

    Parameters are declared so, whatever the activations' dtype: IREE reads a parameter's
    bytes as the type the program declares, so an f32 norm declared f16 reads as garbage.
    """
    return BY_NAME[config.dtype].torch


def linear(
    config: ModelConfig, in_features: int, out_features: int, dtype: torch.dtype
) -> nn.Module:
    """The model's linear layer for `dtype` activations: quantized when the config says its
    weights are, else its weight in the archive's dtype (config.dtype)."""
    if config.quantization is None:
        return Linear(in_features, out_features, bias=False, dtype=stored_dtype(config))
    return QuantLinear(in_features, out_features, scheme(config.quantization), dtype)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 and rounded once to `out` (the activations'
    dtype: what the linear layers after it take); the weight in the archive's dtype."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype, out: torch.dtype):
        super().__init__()
        self.eps, self.out = eps, out
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Mean of squares in float32: f16 would overflow and bf16 lose precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * xf).to(self.out)


class Block(nn.Module):
    """One decoder layer: grouped-query attention with rotary embeddings (head_dim need not be
    dim / heads), then a SwiGLU feed-forward, each after an RMSNorm and added to the residual.

    Its parameters carry the archive's canonical (GGUF-style) names, `blk.{i}.attn_q.weight`
    and so on (facts/tensor_kinds.py), so loading and export need no name table.
    """

    def __init__(self, config: ModelConfig, layer: int, options: ModelOptions, dtype: torch.dtype):
        super().__init__()
        stored = stored_dtype(config)
        dim, eps = config.embedding_length, config.rms_norm_eps
        self.layer = layer
        self.heads, self.kv_heads = config.attention_head_count, config.attention_head_count_kv
        self.head_dim = config.head_dim
        self.interleaved = config.rope_interleaved  # q/k row layout of the weights
        self.kind = options.attention
        self.attn_dtype = options.attention_torch_dtype(config)
        q_dim, kv_dim = self.heads * self.head_dim, self.kv_heads * self.head_dim
        hidden = config.feed_forward_length
        self.attn_norm = RMSNorm(dim, eps, stored, dtype)
        self.attn_q = linear(config, dim, q_dim, dtype)
        self.attn_k = linear(config, dim, kv_dim, dtype)
        self.attn_v = linear(config, dim, kv_dim, dtype)
        self.attn_output = linear(config, q_dim, dim, dtype)
        self.ffn_norm = RMSNorm(dim, eps, stored, dtype)
        self.ffn_gate = linear(config, dim, hidden, dtype)
        self.ffn_up = linear(config, dim, hidden, dtype)
        self.ffn_down = linear(config, hidden, dim, dtype)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        allowed: torch.Tensor,
        kv: KVAccess,
    ) -> torch.Tensor:
        """x and the result are the residual stream, float32 (RESIDUAL_DTYPE)."""
        h = x + self.attention_part(x, cos, sin, allowed, kv).to(RESIDUAL_DTYPE)
        return h + self.feed_forward_part(h).to(RESIDUAL_DTYPE)

    def attention_part(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        allowed: torch.Tensor,
        kv: KVAccess,
    ) -> torch.Tensor:
        """What attention adds to the residual stream x (before any all-reduce)."""
        return self.attention(self.attn_norm(x), cos, sin, allowed, kv)

    def feed_forward_part(self, x: torch.Tensor) -> torch.Tensor:
        """What the feed-forward adds to the residual stream x (before any all-reduce)."""
        return self.feed_forward(self.ffn_norm(x))

    def attention(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        allowed: torch.Tensor,
        kv: KVAccess,
    ) -> torch.Tensor:
        n, s, _ = x.shape
        q = self.attn_q(x).view(n, s, self.heads, self.head_dim)  # [N, S, H, D]
        k = self.attn_k(x).view(n, s, self.kv_heads, self.head_dim)  # [N, S, KV, D]
        v = self.attn_v(x).view(n, s, self.kv_heads, self.head_dim)  # [N, S, KV, D]
        q = apply_rope(q, cos, sin, interleaved=self.interleaved)
        k = apply_rope(k, cos, sin, interleaved=self.interleaved)
        keys, values = kv(self.layer, k, v)  # [N, KV, Sk, D]: this step's or the pages'
        ad = self.attn_dtype
        # Prefill takes the export's kind too: IREE 3.13 cannot compile the fused kernel with
        # a mask for gfx942 at 32/8 heads ("failed to distribute"); the decomposed form
        # compiles everywhere, and chunked prefill bounds its scores to [chunk, keys].
        out = attend(
            q.transpose(1, 2).to(ad), keys.to(ad), values.to(ad), allowed, kind=self.kind
        ).to(x.dtype)  # [N, H, S, D]
        return self.attn_output(out.transpose(1, 2).reshape(n, s, -1))  # [N, S, dim]

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """SwiGLU: down(silu(gate(x)) * up(x))."""
        return self.ffn_down(F.silu(self.ffn_gate(x)) * self.ffn_up(x))


class Layered(Protocol):
    """A model whose decoder layers run through `layer` (PagedLlama, ShardedPagedLlama)."""

    @property
    def layer_count(self) -> int: ...

    def layer(
        self, index: int, *args: torch.Tensor, kvs: Sequence[KVAccess]
    ) -> tuple[torch.Tensor, ...]: ...

    def layer_parameters(self, index: int) -> list[tuple[str, nn.Parameter]]: ...


class LayerRunner(Protocol):
    """How a model runs its decoder layers in order: `streams` (each device's residual
    stream) go through every layer; `rest` (rope tables, masks) and each device's cache access
    `kvs` are the same for all. Returns the streams after the last layer.

    Every layer computes the same function of its own weights: export passes a LayerRunner
    that traces that function once and calls it per layer (stages/export/layer_functions.py)."""

    def __call__(
        self,
        model: Layered,
        streams: tuple[torch.Tensor, ...],
        rest: tuple[torch.Tensor, ...],
        kvs: Sequence[KVAccess],
    ) -> tuple[torch.Tensor, ...]: ...


def run_in_place(
    model: Layered,
    streams: tuple[torch.Tensor, ...],
    rest: tuple[torch.Tensor, ...],
    kvs: Sequence[KVAccess],
) -> tuple[torch.Tensor, ...]:
    """Run the layers right here: eagerly, or inlined into the caller's trace."""
    for index in range(model.layer_count):
        streams = model.layer(index, *streams, *rest, kvs=kvs)
    return streams


class PagedLlama(nn.Module):
    """Llama-family decoder whose K/V live in pages of a caller-owned cache slab.

    Args:
        config: what the model is.
        options: how it runs (page size, activation and KV-cache dtypes, attention kind).
    """

    def __init__(self, config: ModelConfig, options: ModelOptions | None = None):
        super().__init__()
        self.config = config
        self.options = options or ModelOptions()
        self.dtype = self.options.activation_torch_dtype(config)
        self.kv_cache = PagedKVCache.for_model(config, self.options)
        dim, vocab = config.embedding_length, config.vocab_size
        stored = stored_dtype(config)
        self.token_embd = nn.Embedding(vocab, dim, dtype=stored)
        layers = range(config.block_count)
        self.blk = nn.ModuleList(Block(config, i, self.options, self.dtype) for i in layers)
        self.output_norm = RMSNorm(dim, config.rms_norm_eps, stored, self.dtype)
        if config.tie_word_embeddings:  # the embedding table, which stays unquantized
            self.output: nn.Module = Linear(dim, vocab, bias=False, dtype=stored)
            self.output.weight = self.token_embd.weight
        else:
            self.output = linear(config, dim, vocab, self.dtype)
        # Plain floats, not a buffer: export builds the model on the meta device, where a
        # buffer would have no data to put in the program (see rope.inv_freq_tensor).
        self.inv_freq_values = tuple(inv_frequencies(config).tolist())
        self.run_layers: LayerRunner = run_in_place

    @classmethod
    def from_state_dict(
        cls,
        config: ModelConfig,
        tensors: Mapping[str, torch.Tensor],
        *,
        options: ModelOptions | None = None,
        dtype: str | None = None,
        device: torch.device | str | None = None,
    ) -> PagedLlama:
        """Build from canonical-name tensors (see weights.py); `dtype` overrides options'."""
        options = options or ModelOptions()
        if dtype is not None:
            options = dataclasses.replace(options, activation_dtype=dtype)
        with torch.device("meta"):  # no memory or init work for weights about to be replaced
            model = cls(config, options)
        load_canonical(model, tensors, device=device)
        return model.eval()

    @classmethod
    def from_archive(
        cls,
        path: str | Path,
        *,
        options: ModelOptions | None = None,
        dtype: str | None = None,
        device: torch.device | str | None = None,
    ) -> PagedLlama:
        """Build from an irforge IRPA: its config, its tensors; the archive's dtype by default."""
        config, tensors = load_archive(Path(path))
        return cls.from_state_dict(config, tensors, options=options, dtype=dtype, device=device)

    def allocate_cache(
        self, page_count: int, *, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """A zeroed cache slab [page_count, page_elements] in the KV-cache dtype."""
        return self.kv_cache.allocate(page_count, device=device)

    def prefill(
        self,
        tokens: torch.Tensor,
        start_pos: torch.Tensor,
        seq_lens: torch.Tensor,
        seq_block_ids: torch.Tensor,
        cache: torch.Tensor | Sequence[torch.Tensor],
        *,
        all_positions: bool = False,
    ) -> torch.Tensor:
        """Write positions [start_pos, start_pos + S) of each row into its pages, attending to
        the pages before start_pos; logits [N, 1, vocab] of each row's last position
        (seq_lens - 1), the only ones sampled; [N, S, vocab] with `all_positions`.

        tokens [N, S] with S = block_seq_stride·C, padded past seq_lens [N] (the row's length
        at the chunk's end); start_pos [N] a multiple of block_seq_stride (0: a whole prompt);
        seq_block_ids [N, B] the row's pages from position 0, covering the chunk. This is
        shortfin's `has_prefill_position` ABI. The output projection runs on N rows, not N·S:
        at a 128k vocabulary it is most of a short prompt's work.
        """
        positions, allowed = prefill_inputs(tokens, start_pos, seq_block_ids, self.options)
        kv = PrefillKV(
            self.kv_cache, _single_slab(cache), seq_block_ids, start_pos, tokens.shape[1]
        )
        keep = None if all_positions else seq_lens - start_pos
        return self._forward(tokens, positions, allowed, kv, keep)

    def score(
        self,
        tokens: torch.Tensor,
        start_pos: torch.Tensor,
        seq_lens: torch.Tensor,
        seq_block_ids: torch.Tensor,
        cache: torch.Tensor | Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        """A prefill that also scores the prompt: (last-position logits [N, 1, vocab], the
        float32 log-probability of each next token of `tokens` [N, S], and the SCORE_TOP
        likeliest (log-probabilities, ids) [N, S, SCORE_TOP] at each position).

        Position i's entries are about token i + 1 (the last position's are meaningless):
        what echo with logprobs and log-likelihood evaluation read.
        """
        logits = self.prefill(tokens, start_pos, seq_lens, seq_block_ids, cache, all_positions=True)
        logp = torch.log_softmax(logits.float(), dim=-1)  # [N, S, vocab]
        # each position's next token (a gather: roll's slices become copies of the input)
        s = tokens.shape[1]
        after = torch.remainder(torch.arange(s, device=tokens.device) + 1, s)
        following = tokens.index_select(1, after)
        chosen = logp.gather(-1, following.unsqueeze(-1)).squeeze(-1)  # [N, S]
        values, ids = torch.topk(logp, SCORE_TOP, dim=-1)
        return last_positions(logits, seq_lens - start_pos), chosen, values, ids

    def decode(
        self,
        tokens: torch.Tensor,
        seq_lens: torch.Tensor,
        start_positions: torch.Tensor,
        seq_block_ids: torch.Tensor,
        cache: torch.Tensor | Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Append tokens [N, 1] at start_positions [N]; logits [N, 1, vocab].

        seq_lens [N] = start_positions + 1; seq_block_ids [N, B] must cover start_positions.
        """
        positions, allowed = decode_inputs(seq_lens, start_positions, seq_block_ids, self.options)
        slab = _single_slab(cache)
        kv = DecodeKV(self.kv_cache, slab, seq_block_ids, start_positions, allowed[:, 0])
        return self._forward(tokens, positions, allowed, kv)

    def verify(
        self,
        tokens: torch.Tensor,
        start_positions: torch.Tensor,
        seq_block_ids: torch.Tensor,
        cache: torch.Tensor | Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Speculative decoding's step: tokens [N, S] (each row's last token, then the tokens
        proposed after it) at positions start_positions + 0..S-1; logits [N, S, vocab], row
        i's position j predicting the token after tokens[i, :j + 1].

        Any start position; seq_block_ids [N, B] covers start_positions + S - 1 (VerifyKV).
        """
        positions, allowed = chunk_inputs(tokens, start_positions, seq_block_ids, self.options)
        slab = _single_slab(cache)
        kv = VerifyKV(self.kv_cache, slab, seq_block_ids, start_positions, tokens.shape[1])
        return self._forward(tokens, positions, allowed, kv)

    @property
    def layer_count(self) -> int:
        return len(self.blk)

    def layer(
        self, index: int, *args: torch.Tensor, kvs: Sequence[KVAccess]
    ) -> tuple[torch.Tensor, ...]:
        """Decoder layer `index`: args are the residual stream h (float32), cos, sin and the
        allowed keys; the result, h after the layer."""
        h, cos, sin, allowed = args
        (kv,) = kvs
        return (cast(Block, self.blk[index])(h, cos, sin, allowed, kv),)

    def layer_parameters(self, index: int) -> list[tuple[str, nn.Parameter]]:
        """(name in this model, parameter) of every weight layer `index` reads."""
        return [(f"blk.{index}.{n}", p) for n, p in self.blk[index].named_parameters()]

    def _forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor,
        kv: KVAccess,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = as_dtype(self.token_embd(tokens), RESIDUAL_DTYPE)  # [N, S, dim]
        cos, sin = rope_tables(
            positions, inv_freq_tensor(self.inv_freq_values, tokens.device)
        )  # [N, S, 1, D/2]
        (h,) = self.run_layers(self, (h,), (cos, sin, allowed), [kv])
        kv.flush()  # every layer has read the cache: now write this call's K/V, once
        if keep is not None:
            h = last_positions(h, keep)
        return self.output(self.output_norm(h))  # [N, S or 1, vocab]


def last_positions(h: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """h [N, S, D] at each row's last valid position seq_lens - 1: [N, 1, D]."""
    index = (seq_lens - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
    return torch.gather(h, 1, index)


def prefill_inputs(
    tokens: torch.Tensor,
    start_pos: torch.Tensor,
    seq_block_ids: torch.Tensor,
    options: ModelOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [N, S], allowed keys [N, S, B·stride]) of a prefill chunk; checks that S is
    whole pages and that the pages cover at least the chunk.

    A query sees the keys at or before its position, and nothing else: a real position never
    sees a padding one, no row is fully masked, and padding rows' outputs are dropped.
    """
    stride = options.block_seq_stride
    n, s = tokens.shape
    pages = seq_block_ids.shape[1]
    # checked eagerly only: traced, both are symbolic and the caller's contract
    if isinstance(s, int) and isinstance(pages, int) and (s % stride or s > pages * stride):
        raise ConfigError(
            f"prefill tokens have {s} positions, expected a multiple of block_seq_stride "
            f"{stride} no larger than the {pages} pages given"
        )
    return chunk_inputs(tokens, start_pos, seq_block_ids, options)


def chunk_inputs(
    tokens: torch.Tensor,
    start_pos: torch.Tensor,
    seq_block_ids: torch.Tensor,
    options: ModelOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [N, S], allowed keys [N, S, B·stride]) of S consecutive positions of each
    row from start_pos: a query sees the keys at or before its position."""
    n, s = tokens.shape
    dev = seq_block_ids.device
    positions = start_pos.view(n, 1) + torch.arange(s, device=dev).view(1, s)  # [N, S]
    keys = torch.arange(seq_block_ids.shape[1] * options.block_seq_stride, device=dev)
    return positions, keys.view(1, 1, -1) <= positions.unsqueeze(2)


def decode_inputs(
    seq_lens: torch.Tensor,
    start_positions: torch.Tensor,
    seq_block_ids: torch.Tensor,
    options: ModelOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [N, 1], allowed keys [N, 1, B·stride]) of a decode step."""
    key_count = seq_block_ids.shape[1] * options.block_seq_stride
    return start_positions.unsqueeze(1), decode_mask(seq_lens, key_count)


def _single_slab(cache: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The one slab of a single-device cache, given bare or as a one-element list."""
    if isinstance(cache, torch.Tensor):
        return cache
    if len(cache) != 1:
        raise ConfigError(
            f"got {len(cache)} cache slabs; tensor-parallel caches (one slab per device) "
            "are not supported yet, pass a single slab"
        )
    return cache[0]
