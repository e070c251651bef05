"""PagedLlama against transformers on tiny seeded Llama and Mistral models."""

from __future__ import annotations

import random
from functools import cache

import pytest
import torch

from irforge.model import ModelOptions, PagedLlama
from model_helpers import (
    STRIDE,
    canonical_tensors,
    gguf_layout,
    greedy,
    hf_logits,
    model_config,
    paged_decode,
    paged_prefill,
    pages_needed,
    rel_err,
    tiny_llama,
    tiny_mistral,
)

F32_TOL = 1e-4
# Measured on these models: f16 ~1.1e-3, bf16 ~9e-3, f32 with a bf16 cache ~1.6e-3.
LOW_PRECISION_TOL = {("f16", None): 5e-3, ("bf16", None): 3e-2, ("f32", "bf16"): 5e-3}
PROMPT = [17, 3, 250, 42, 9, 128, 77, 5, 200, 31, 64]  # 11 tokens: 3 pages of 4
PAGES = [6, 2, 9, 4, 11, 1, 7]  # non-contiguous; 7 pages hold 11 + 16 tokens
CACHE_PAGES = 12


@cache
def _hf(name: str) -> torch.nn.Module:
    return tiny_mistral() if name == "mistral" else tiny_llama(tied=name == "llama-tied")


def _paged(name: str, options: ModelOptions | None = None, dtype: str | None = None) -> PagedLlama:
    """The PagedLlama for a variant; "llama-gguf" holds the weights in llama.cpp's layout."""
    hf = _hf(name.removesuffix("-gguf"))
    config, tensors = model_config(hf), canonical_tensors(hf)
    if name.endswith("-gguf"):
        config, tensors = gguf_layout(hf, config, tensors)
    options = options or ModelOptions(block_seq_stride=STRIDE)
    return PagedLlama.from_state_dict(config, tensors, options=options, dtype=dtype)


VARIANTS = ["llama", "llama-gguf", "mistral"]


@pytest.mark.parametrize("name", VARIANTS)
def test_prefill_matches_transformers(name: str) -> None:
    model = _paged(name)
    cache_slab = model.allocate_cache(CACHE_PAGES)
    (logits,) = paged_prefill(model, cache_slab, [PROMPT], [PAGES])
    expected = hf_logits(_hf(name.removesuffix("-gguf")), PROMPT)
    assert rel_err(logits, expected) < F32_TOL


@pytest.mark.parametrize("name", VARIANTS + ["llama-tied"])
def test_decode_matches_transformers(name: str) -> None:
    hf = _hf(name.removesuffix("-gguf"))
    model = _paged(name)
    cache_slab = model.allocate_cache(CACHE_PAGES)
    (seq,), (logits,) = greedy(model, cache_slab, [PROMPT], [PAGES], steps=16)
    # Every position's logits, prompt and the 16 decoded ones, against one full forward pass.
    assert rel_err(logits, hf_logits(hf, seq)) < F32_TOL
    hf.generation_config.eos_token_id = None  # greedy past eos, as the paged model runs
    with torch.no_grad():
        generated = hf.generate(
            torch.tensor([PROMPT]),
            attention_mask=torch.ones(1, len(PROMPT), dtype=torch.int64),
            max_new_tokens=16,
            do_sample=False,
            pad_token_id=0,
        )
    assert seq == generated[0].tolist()


def test_batch_matches_each_sequence_alone() -> None:
    """4 prompts of different lengths in shuffled pages; padding never leaks across rows."""
    model = _paged("llama")
    prompts = [PROMPT + [7, 8], PROMPT[:6], PROMPT[:1], PROMPT[2:11]]
    steps = 5
    pool = list(range(1, 40))  # page 0 is the scratch page padding entries point at
    random.Random(0).shuffle(pool)
    pages = []
    for p in prompts:
        n = pages_needed(len(p) + steps)
        pages.append(pool[:n])
        pool = pool[n:]
    seqs, batched = greedy(model, model.allocate_cache(40), prompts, pages, steps)
    for prompt, seq, logits in zip(prompts, seqs, batched, strict=True):
        alone_pages = [list(range(1, 1 + pages_needed(len(seq))))]
        alone_seq, alone = greedy(model, model.allocate_cache(12), [prompt], alone_pages, steps)
        assert alone_seq[0] == seq
        assert rel_err(logits, alone[0]) < 1e-5
        assert rel_err(logits, hf_logits(_hf("llama"), seq)) < F32_TOL


def test_uninitialized_cache_and_padding_rows_stay_finite() -> None:
    """NaN in never-written slots and an all-padding row (seq_len 0) must not reach any logit."""
    model = _paged("llama")
    clean, dirty = model.allocate_cache(CACHE_PAGES), model.allocate_cache(CACHE_PAGES)
    dirty.fill_(float("nan"))
    for slab in (clean, dirty):
        paged_prefill(model, slab, [PROMPT], [PAGES])
    with torch.no_grad():
        pos = len(PROMPT)
        logits = model.decode(
            torch.tensor([[5], [0]]),
            torch.tensor([pos + 1, 0]),
            torch.tensor([pos, 0]),
            torch.tensor([PAGES[:3], [0, 0, 0]]),
            dirty,
        )
    expected = paged_decode(model, clean, [5], [pos], [PAGES])
    assert torch.isfinite(logits).all()
    assert rel_err(logits[0], expected) < 1e-6


def test_sdpa_matches_decomposed() -> None:
    sdpa = _paged("mistral", ModelOptions(block_seq_stride=STRIDE, attention="sdpa"))
    decomposed = _paged("mistral")
    results = []
    for model in (sdpa, decomposed):
        results.append(greedy(model, model.allocate_cache(CACHE_PAGES), [PROMPT], [PAGES], 4))
    assert results[0][0] == results[1][0]
    assert rel_err(results[0][1][0], results[1][1][0]) < 1e-5


@pytest.mark.parametrize(("dtype", "kv_dtype"), list(LOW_PRECISION_TOL))
@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_low_precision_stays_near_f32_reference(name: str, dtype: str, kv_dtype: str | None):
    options = ModelOptions(block_seq_stride=STRIDE, kv_cache_dtype=kv_dtype)
    model = _paged(name, options, dtype=dtype)
    cache_slab = model.allocate_cache(CACHE_PAGES)
    assert cache_slab.dtype == {"f16": torch.float16, "bf16": torch.bfloat16}.get(
        kv_dtype or dtype, torch.float32
    )
    (seq,), (logits,) = greedy(model, cache_slab, [PROMPT], [PAGES], steps=16)
    # Teacher-forced on the low-precision run's own tokens, which may differ at near-ties.
    assert rel_err(logits, hf_logits(_hf(name), seq)) < LOW_PRECISION_TOL[(dtype, kv_dtype)]


def test_f16_attention_in_an_f32_model_stays_near_reference() -> None:
    options = ModelOptions(block_seq_stride=STRIDE, attention_dtype="f16")
    model = _paged("llama", options)
    assert model.blk[0].attn_dtype == torch.float16
    (seq,), (logits,) = greedy(model, model.allocate_cache(CACHE_PAGES), [PROMPT], [PAGES], 8)
    assert rel_err(logits, hf_logits(_hf("llama"), seq)) < 5e-3


@pytest.mark.parametrize("name", ["llama", "mistral"])
@pytest.mark.parametrize("chunk_pages", [1, 2])
def test_prefill_in_chunks_at_start_positions_matches_transformers(
    name: str, chunk_pages: int
) -> None:
    """Chunks written after the pages before them (start_pos > 0) give transformers' logits at
    every position, and the same cache as one whole-prompt prefill; rows of one call may
    start at different positions."""
    model = _paged(name)
    expected = hf_logits(_hf(name), PROMPT)
    whole = model.allocate_cache(CACHE_PAGES)
    paged_prefill(model, whole, [PROMPT], [PAGES])
    chunked = model.allocate_cache(CACHE_PAGES)
    size, got = chunk_pages * STRIDE, []
    for start in range(0, len(PROMPT), size):
        chunk = PROMPT[start : start + size]
        tokens = torch.zeros(2, size, dtype=torch.int64)
        tokens[0, : len(chunk)] = torch.tensor(chunk)
        ids = PAGES[: pages_needed(start + size)]
        # row 1: a padding row on the scratch page, starting at 0
        table = torch.tensor([ids, [0] * len(ids)])
        with torch.no_grad():
            out = model.prefill(
                tokens,
                torch.tensor([start, 0]),
                torch.tensor([start + len(chunk), 1]),
                table,
                chunked,
                all_positions=True,
            )
            last = model.prefill(
                tokens,
                torch.tensor([start, 0]),
                torch.tensor([start + len(chunk), 1]),
                table,
                chunked.clone(),
            )
        got.append(out[0, : len(chunk)].float())
        torch.testing.assert_close(last[0, 0], out[0, len(chunk) - 1])  # the chunk's last
    assert rel_err(torch.cat(got), expected) < F32_TOL
    used = PAGES[: pages_needed(len(PROMPT))]
    torch.testing.assert_close(chunked[used], whole[used])


@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_verify_at_any_position_matches_transformers(name: str) -> None:
    """Speculative decoding's verify: 4 positions from an unaligned start, every position's
    logits as transformers gives them; a second verify after 2 of them are kept sees the kept
    positions' cache entries and overwrites the rejected ones. A padding row (scratch page)
    rides along."""
    hf, model = _hf(name), _paged(name)
    slab = model.allocate_cache(CACHE_PAGES)
    paged_prefill(model, slab, [PROMPT], [PAGES])
    start, first, second = len(PROMPT), [5, 9, 200, 31], [77, 3, 250, 42]
    with torch.no_grad():
        logits = []
        for at, tokens in ((start, first), (start + 2, second)):
            blocks = pages_needed(at + len(tokens))
            ids = torch.tensor([PAGES[:blocks], [0] * blocks])
            out = model.verify(torch.tensor([tokens, [0] * 4]), torch.tensor([at, 0]), ids, slab)
            assert torch.isfinite(out).all()
            logits.append(out[0].float())
    want = hf_logits(hf, PROMPT + first)[start:]
    assert rel_err(logits[0], want) < F32_TOL
    want = hf_logits(hf, PROMPT + first[:2] + second)[start + 2 :]
    assert rel_err(logits[1], want) < F32_TOL
