"""Attention masks and grouped-query attention, decomposed (QK^T, softmax, V) or via SDPA."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# A finite "minus infinity": a fully masked row (a padding sequence with seq_len 0) then
# gets a uniform softmax instead of NaN, and nothing overflows in float32.
MASKED_SCORE = torch.finfo(torch.float32).min


def decode_mask(seq_lens: torch.Tensor, key_count: int) -> torch.Tensor:
    """allowed [N, 1, Sk]: the new token sees every cached position < seq_lens[n]."""
    pos = torch.arange(key_count, device=seq_lens.device)  # [Sk]
    return (pos.unsqueeze(0) < seq_lens.unsqueeze(1)).unsqueeze(1)  # [N, 1, Sk]


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, *, kind: str
) -> torch.Tensor:
    """q [N, H, Sq, D], k/v [N, KV, Sk, D], allowed [N, Sq, Sk] -> [N, H, Sq, D].

    Query head h reads kv head h // (H / KV), as in HF's `repeat_kv`.
    """
    if kind == "sdpa":
        return _sdpa(q, k, v, allowed)
    return _decomposed(q, k, v, allowed)


def _decomposed(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    n, heads, sq, d = q.shape
    kv_heads = k.shape[1]
    # Fold each kv head's query heads into the row dim instead of repeating K and V: decode
    # then reads every cached K/V once, as one batched matmul per kv head.
    qg = (q * (1.0 / math.sqrt(d))).reshape(n, kv_heads, -1, d)  # [N, KV, rep·Sq, D]
    scores = torch.matmul(qg, k.transpose(-1, -2)).float()  # [N, KV, rep·Sq, Sk]
    # Row r·Sq + j of a group is query j of its r-th head: tile the mask rather than
    # reshaping the scores (a reshape there makes export guard on the symbolic strides).
    allowed = allowed.repeat(1, heads // kv_heads, 1).unsqueeze(1)  # [N, 1, rep·Sq, Sk]
    scores = torch.where(allowed, scores, MASKED_SCORE)
    # Softmax normalized after the PV product: out = (exp(s - max) @ V) / sum(exp(s - max)).
    # The division then runs on [rep·Sq, D] instead of [rep·Sq, Sk], and IREE does not raise
    # the pattern to its linalg.softmax op, whose llvm-cpu code (3.13) took 14 of the 16 s of
    # a 4096-token prefill; unfused, the same attention runs 12x faster (bench/RESULTS.md).
    e = torch.exp(scores - scores.amax(dim=-1, keepdim=True))  # [N, KV, rep·Sq, Sk]
    total = e.sum(dim=-1, keepdim=True).flatten(0, 1)  # [N·KV, rep·Sq, 1]
    # The unnormalized product grows with the key count (up to Sk·max|v|): past f16's 65504
    # it would overflow, so an f16 model takes it in f32; bf16 has f32's range.
    pv = torch.float32 if v.dtype == torch.float16 else v.dtype
    # bmm on explicitly flattened batches: matmul's 4-D folding gives the output symbolic
    # strides that export cannot prove contiguous.
    out = torch.bmm(e.to(pv).flatten(0, 1), v.reshape(n * kv_heads, -1, d).to(pv))
    out = (out.float() / total).to(v.dtype)  # [N·KV, rep·Sq, D]
    out = out.view(n, kv_heads, heads // kv_heads, sq, d)  # [N, KV, rep, Sq, D]
    return out.flatten(1, 2)  # [N, H, Sq, D]


def _per_head(k: torch.Tensor, heads: int) -> torch.Tensor:
    """k [N, KV, Sk, D] repeated for each of its query heads: [N, H, Sk, D]."""
    n, kv_heads, sk, d = k.shape
    return k.unsqueeze(2).expand(n, kv_heads, heads // kv_heads, sk, d).reshape(n, heads, sk, d)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """One fused kernel (IREE's online-softmax attention): its memory is the [N, Sq, Sk] mask,
    where the decomposed form holds [N, KV, rep·Sq, Sk] f32 scores (8.6 GB per layer for 32
    heads at 8k positions)."""
    heads = q.shape[1]
    k, v = _per_head(k, heads), _per_head(v, heads)  # [N, H, Sk, D]
    # An additive bias rather than a boolean mask: SDPA turns a fully masked boolean row
    # into NaN. Half of the dtype's minimum leaves room to add a score without overflow.
    bias = torch.where(allowed, 0.0, torch.finfo(q.dtype).min / 2).to(q.dtype)
    bias = bias.unsqueeze(1)  # [N, 1, Sq, Sk]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
