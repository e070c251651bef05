"""Tiny seeded transformers models and paged-run helpers shared by the model tests."""

from __future__ import annotations

import math

import torch
from transformers import LlamaForCausalLM, MistralForCausalLM

import tiny
from irforge.facts.config import ModelConfig
from irforge.facts.tensor_names import hf_to_canonical
from irforge.model import PagedLlama

STRIDE = 4  # small pages, so short prompts cross page boundaries
SCRATCH_PAGE = 0  # what padding entries of seq_block_ids point at


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights with O(1) activations: HF's std-0.02 init makes attention nearly uniform,
    which would hide rotary-embedding and masking mistakes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1:  # norm weights
                p.copy_(1.0 + 0.1 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[1]))
    return model.eval()


def tiny_llama(*, tied: bool = False, seed: int = 0) -> LlamaForCausalLM:
    """Llama with llama3 rope scaling (changing some frequencies), GQA 4:2, untied unless asked."""
    torch.manual_seed(seed)
    return randomize(LlamaForCausalLM(tiny.llama_config(tie_word_embeddings=tied)), seed)


def tiny_mistral(*, seed: int = 1) -> MistralForCausalLM:
    """Mistral-Nemo-like: head_dim 32 while hidden / heads = 16."""
    torch.manual_seed(seed)
    return randomize(MistralForCausalLM(tiny.mistral_config()), seed)


def model_config(hf_model: torch.nn.Module) -> ModelConfig:
    return ModelConfig.from_hf_config(hf_model.config.to_dict(), dtype="f32")


def canonical_tensors(hf_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """HF state dict under canonical names (what `irforge convert` stores for HF sources)."""
    out = {}
    for name, tensor in hf_model.state_dict().items():
        canonical = hf_to_canonical(name)
        if canonical is not None:
            out[canonical] = tensor.detach().clone()
    return out


def llama3_freq_factors(hf_model: torch.nn.Module) -> tuple[float, ...]:
    """GGUF's rope_freqs divisors, from transformers' own llama3 frequencies."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = hf_model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    theta = cfg.rope_parameters["rope_theta"]
    plain = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg)
    return tuple((plain / scaled.double()).tolist())


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    return torch.from_numpy(tiny.llamacpp_permute(w.numpy(), n_head).copy())


def gguf_layout(
    hf_model: torch.nn.Module, config: ModelConfig, tensors: dict[str, torch.Tensor]
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """What a llama.cpp GGUF of the same model holds: permuted q/k, rope scaling as divisors."""
    out = dict(tensors)
    for name, t in tensors.items():
        if name.endswith("attn_q.weight"):
            out[name] = _permute(t, config.attention_head_count)
        elif name.endswith("attn_k.weight"):
            out[name] = _permute(t, config.attention_head_count_kv)
    factors = llama3_freq_factors(hf_model)
    out["rope_freqs.weight"] = torch.tensor(factors, dtype=torch.float32)
    gguf_config = config.replace(
        rope_scaling=None, rope_freq_factors=factors, rope_interleaved=True
    )
    return gguf_config, out


@torch.no_grad()
def hf_logits(hf_model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    """Reference logits [len(tokens), vocab] for one unpadded sequence."""
    return hf_model(torch.tensor([tokens])).logits[0].float()


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def pages_needed(length: int) -> int:
    return -(-length // STRIDE)


def _padded_ids(pages: list[list[int]], blocks: int) -> torch.Tensor:
    rows = [p[:blocks] + [SCRATCH_PAGE] * (blocks - len(p[:blocks])) for p in pages]
    return torch.tensor(rows, dtype=torch.int64)


@torch.no_grad()
def paged_prefill(
    model: PagedLlama, cache: torch.Tensor, prompts: list[list[int]], pages: list[list[int]]
) -> list[torch.Tensor]:
    """Prefill a batch; each sequence's logits [len(prompt), vocab] (float32)."""
    blocks = max(pages_needed(len(p)) for p in prompts)
    tokens = torch.zeros(len(prompts), blocks * STRIDE, dtype=torch.int64)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p)
    seq_lens = torch.tensor([len(p) for p in prompts], dtype=torch.int64)
    start = torch.zeros(len(prompts), dtype=torch.int64)
    ids = _padded_ids(pages, blocks)
    logits = model.prefill(tokens, start, seq_lens, ids, cache, all_positions=True)
    return [logits[i, : len(p)].float() for i, p in enumerate(prompts)]


@torch.no_grad()
def paged_decode(
    model: PagedLlama,
    cache: torch.Tensor,
    tokens: list[int],
    positions: list[int],
    pages: list[list[int]],
) -> torch.Tensor:
    """One decode step for a batch; logits [N, vocab] (float32)."""
    blocks = max(pages_needed(p + 1) for p in positions)
    start = torch.tensor(positions, dtype=torch.int64)
    logits = model.decode(
        torch.tensor(tokens, dtype=torch.int64).unsqueeze(1),
        start + 1,
        start,
        _padded_ids(pages, blocks),
        cache,
    )
    return logits[:, 0].float()


def greedy(
    model: PagedLlama,
    cache: torch.Tensor,
    prompts: list[list[int]],
    pages: list[list[int]],
    steps: int,
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Prefill, then `steps` greedy decode steps for a batch.

    Returns each sequence's tokens (prompt + generated) and logits [len, vocab], one row
    per position (prefill rows, then one per decode step), like a full forward pass.
    """
    prefill_logits = paged_prefill(model, cache, prompts, pages)
    seqs = [list(p) for p in prompts]
    logits = [[lg] for lg in prefill_logits]
    for _ in range(steps):
        nxt = [int(lg[-1][-1].argmax()) for lg in logits]
        positions = [len(s) for s in seqs]
        for s, t in zip(seqs, nxt, strict=True):
            s.append(t)
        step = paged_decode(model, cache, nxt, positions, pages)
        for lg, row in zip(logits, step, strict=True):
            lg.append(row.unsqueeze(0))
    return seqs, [torch.cat(lg) for lg in logits]
