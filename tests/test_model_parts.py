"""Unit tests of the model's parts: rope, KV pages, options, weight loading, presets, export."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import tiny
from irforge.errors import ConfigError, InputError
from irforge.facts.presets import PRESETS, get_preset
from irforge.model import ModelOptions, PagedKVCache, PagedLlama, inv_frequencies
from irforge.model.rope import apply_rope, rope_tables
from model_helpers import (
    STRIDE,
    canonical_tensors,
    llama3_freq_factors,
    model_config,
    paged_prefill,
    tiny_llama,
    tiny_mistral,
)

# -- rope ---------------------------------------------------------------------------------


def test_llama3_frequencies_match_transformers_and_gguf_factors() -> None:
    hf = tiny_llama()
    config = model_config(hf)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf.config)
    ours = inv_frequencies(config)
    torch.testing.assert_close(ours, expected.float(), rtol=1e-6, atol=0)
    # The scaling must matter for the tiny model, or the parity tests would not test it.
    assert not torch.allclose(ours, inv_frequencies(config.replace(rope_scaling=None)))
    gguf = config.replace(rope_scaling=None, rope_freq_factors=llama3_freq_factors(hf))
    torch.testing.assert_close(inv_frequencies(gguf), ours, rtol=1e-6, atol=0)
    # tiny.py computes llama.cpp's rope_freqs independently; all three agree.
    factors = tuple(float(x) for x in tiny.llamacpp_rope_freqs(hf.config))
    torch.testing.assert_close(
        inv_frequencies(config.replace(rope_scaling=None, rope_freq_factors=factors)),
        ours,
        rtol=1e-6,
        atol=0,
    )


def test_interleaved_rope_is_half_split_rope_in_llama_cpp_row_order() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 16)  # [N, S, heads, D]
    cos, sin = rope_tables(torch.arange(5).expand(2, 5), torch.rand(8))
    # llama.cpp's permutation moves dim i + D/2 next to dim i: order (0, 8, 1, 9, ...).
    order = torch.arange(16).view(2, 8).t().flatten()
    half = apply_rope(x, cos, sin, interleaved=False)
    inter = apply_rope(x[..., order], cos, sin, interleaved=True)
    torch.testing.assert_close(inter, half[..., order])


# -- KV pages -----------------------------------------------------------------------------


def _small_cache() -> PagedKVCache:
    return PagedKVCache(layers=2, kv_heads=2, block_seq_stride=4, head_dim=3, dtype=torch.float32)


def test_pages_round_trip_and_token_lands_at_its_page_and_offset() -> None:
    kvc = _small_cache()
    slab = kvc.allocate(6)
    ids = torch.tensor([[4, 1], [2, 5]])
    k = [torch.randn(2, 8, 2, 3) for _ in range(2)]  # per layer [N, B·stride, KV, D]
    v = [torch.randn(2, 8, 2, 3) for _ in range(2)]
    kvc.write_pages(slab, torch.stack(k), torch.stack(v), ids)
    for layer in range(2):
        keys, values = kvc.gather(slab, layer, ids, torch.float32)  # [N, KV, B·stride, D]
        torch.testing.assert_close(keys, k[layer].transpose(1, 2))
        torch.testing.assert_close(values, v[layer].transpose(1, 2))
    assert kvc.pages(slab)[[0, 3]].abs().sum() == 0  # unlisted pages untouched

    before = slab.clone()
    new_k = [torch.randn(2, 2, 3) for _ in range(2)]  # per layer [N, KV, D]
    new_v = [torch.randn(2, 2, 3) for _ in range(2)]
    kvc.write_token(slab, torch.stack(new_k), torch.stack(new_v), ids, torch.tensor([5, 2]))
    pages = kvc.pages(slab)
    for layer in range(2):
        torch.testing.assert_close(pages[1, layer, 0, :, 1], new_k[layer][0])  # pos 5: block 1
        torch.testing.assert_close(pages[2, layer, 1, :, 2], new_v[layer][1])  # pos 2: block 0
    changed = (slab != before).view(6, 2, 2, 2, 4, 3).any(-1)  # [page, L, K/V, KV, offset]
    assert changed.sum() == 2 * 2 * 2 * 2  # two positions x layers x K/V x heads, nothing else


def test_slab_of_wrong_width_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[pages, 96\]"):
        _small_cache().pages(torch.zeros(3, 95))


def test_page_size_matches_sharktank_for_llama_8b() -> None:
    options = ModelOptions(block_seq_stride=32)
    assert PagedKVCache.for_model(get_preset("llama-3.1-8b"), options).page_elements == 2097152


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="attention"):
        ModelOptions(attention="flash")
    with pytest.raises(ConfigError, match="kv_cache_dtype"):
        ModelOptions(kv_cache_dtype="f8")
    with pytest.raises(ConfigError, match="block_seq_stride"):
        ModelOptions(block_seq_stride=0)


# -- weights ------------------------------------------------------------------------------


def test_missing_unknown_and_misshapen_tensors_are_named() -> None:
    hf = tiny_mistral()
    config, tensors = model_config(hf), canonical_tensors(hf)
    missing = {k: v for k, v in tensors.items() if k != "blk.1.ffn_up.weight"}
    with pytest.raises(InputError, match=r"missing blk\.1\.ffn_up\.weight"):
        PagedLlama.from_state_dict(config, missing)
    with pytest.raises(InputError, match=r"unknown blk\.0\.attn_qkv\.weight"):
        PagedLlama.from_state_dict(config, {**tensors, "blk.0.attn_qkv.weight": torch.ones(1)})
    bad = {**tensors, "blk.0.attn_q.weight": torch.ones(64, 64)}
    with pytest.raises(InputError, match=r"attn_q\.weight has shape \(64, 64\).*\(128, 64\)"):
        PagedLlama.from_state_dict(config, bad)


def test_loaded_model_has_no_meta_tensors_and_ties_embeddings() -> None:
    hf = tiny_llama(tied=True)
    config = model_config(hf).replace(dtype="bf16")
    model = PagedLlama.from_state_dict(config, canonical_tensors(hf), dtype="f32")
    assert model.output.weight is model.token_embd.weight
    assert all(not t.is_meta for t in [*model.parameters(), *model.buffers()])
    # weights as the archive stores them (config.dtype), whatever the activations are: a
    # compiled program reads the stored bytes as the dtype it declares
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.dtype == torch.float32
    assert list(model.buffers()) == []  # nothing the meta-device export could not hold


# -- presets ------------------------------------------------------------------------------


def test_presets() -> None:
    assert len(PRESETS) == 9  # the eight seed models and the built-in tiny one
    eight = get_preset("llama-3.1-8b")
    assert (eight.embedding_length, eight.block_count, eight.feed_forward_length) == (
        4096,
        32,
        14336,
    )
    assert eight.rope_scaling is not None and eight.rope_scaling.factor == 8.0
    assert get_preset("llama-3.1-405b-instruct").eos_token_ids == (128001, 128008, 128009)
    nemo = get_preset("mistral-nemo-instruct-2407")
    assert nemo.head_dim * nemo.attention_head_count != nemo.embedding_length
    with pytest.raises(ConfigError, match="llama-3.1-70b.*mistral-nemo-base-2407"):
        get_preset("llama-3.1-7b")


# -- export -------------------------------------------------------------------------------


def test_torch_export_with_dynamic_batch_and_pages() -> None:
    """prefill and decode trace with symbolic batch and page counts, and run like eager."""
    from torch.export import Dim, export

    hf = tiny_mistral()
    model = PagedLlama.from_state_dict(
        model_config(hf), canonical_tensors(hf), options=ModelOptions(block_seq_stride=STRIDE)
    )

    class Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens, seq_lens, start_positions, seq_block_ids, cache):
            return self.model.decode(tokens, seq_lens, start_positions, seq_block_ids, cache)

    class Prefill(Decode):
        def forward(self, tokens, start_pos, seq_lens, seq_block_ids, cache):
            return self.model.prefill(tokens, start_pos, seq_lens, seq_block_ids, cache)

    bs, blocks, pages = Dim("bs", max=64), Dim("blocks", min=2, max=64), Dim("pages")
    chunk = Dim("chunk", min=2, max=64)
    ids = torch.tensor([[1, 2], [3, 4]])
    prefill = export(
        Prefill(),
        (
            torch.zeros(2, 8, dtype=torch.int64),
            torch.zeros(2, dtype=torch.int64),
            torch.tensor([8, 3]),
            ids,
            model.allocate_cache(5),
        ),
        dynamic_shapes=(
            {0: bs, 1: chunk * STRIDE},
            {0: bs},
            {0: bs},
            {0: bs, 1: blocks},
            {0: pages},
        ),
    ).module()
    start = torch.tensor([7, 3])
    decode = export(
        Decode(),
        (torch.zeros(2, 1, dtype=torch.int64), start + 1, start, ids, model.allocate_cache(5)),
        dynamic_shapes=({0: bs}, {0: bs}, {0: bs}, {0: bs, 1: blocks}, {0: pages}),
    ).module()

    prompts, table = [[5, 6, 7, 8, 9], [1, 2], [3] * 11], [[9, 3], [1, 0, 0], [4, 7, 2]]
    eager_slab, traced_slab = model.allocate_cache(10), model.allocate_cache(10)
    expected = paged_prefill(model, eager_slab, prompts, table)
    tokens = torch.zeros(3, 12, dtype=torch.int64)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p)
    ids = torch.tensor([t + [0] * (3 - len(t)) for t in table])
    lens = torch.tensor([len(p) for p in prompts])
    got = prefill(tokens, torch.zeros(3, dtype=torch.int64), lens, ids, traced_slab)
    assert got.shape == (3, 1, model.config.vocab_size)  # each row's last position only
    for i in range(len(prompts)):
        torch.testing.assert_close(got[i, 0], expected[i][-1])
    real = [1, 2, 3, 4, 5, 6, 7, 8, 9]  # pages the prompts own (0 is the scratch page)
    torch.testing.assert_close(traced_slab[real], eager_slab[real])

    args = (torch.tensor([[1], [2], [3]]), lens + 1, lens, ids)
    with torch.no_grad():
        torch.testing.assert_close(decode(*args, traced_slab), model.decode(*args, eager_slab))
    torch.testing.assert_close(traced_slab[real], eager_slab[real])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decomposed_attention_over_long_context_stays_in_range(dtype: torch.dtype) -> None:
    """Normalizing after the PV product sums Sk unnormalized terms: at 16k keys of |v| = 8 that
    is 131072, past f16's range, where torch's SDPA (f32, the reference) gives v's mean."""
    from irforge.model.attention import attend

    torch.manual_seed(0)
    keys = 16384
    q = torch.randn(1, 4, 3, 64) * 0.01  # near-uniform attention: the largest sum
    k = torch.randn(1, 2, keys, 64)
    v = 8.0 + torch.rand(1, 2, keys, 64)
    allowed = torch.ones(1, 3, keys, dtype=torch.bool)
    out = attend(q.to(dtype), k.to(dtype), v.to(dtype), allowed, kind="decomposed")
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    )
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=0.0)


@pytest.mark.parametrize("weight", [torch.float16, torch.bfloat16])
def test_widening_linear_is_the_linear_of_the_widened_weight(weight: torch.dtype) -> None:
    """Eagerly (the eager model, verify's reference), the op is F.linear of the weight
    widened to f32: the products and sums the compiled matmul computes."""
    from irforge.model.widening import widening_linear

    x = torch.randn(5, 64)
    w = torch.randn(24, 64).to(weight)
    got = widening_linear(x, w)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.nn.functional.linear(x, w.float()))
    with pytest.raises(TypeError, match="f32 rows"):
        widening_linear(x.half(), w)


@pytest.mark.parametrize(
    ("dtype", "quantization", "asked", "want"),
    [
        ("f16", None, None, ("f32", "f16")),  # widened: f32 rows, the cache stays f16
        ("f16", None, "f16", ("f16", "f16")),  # an activation dtype asked for wins
        ("bf16", None, None, ("bf16", "bf16")),  # bf16's own tile is faster on the CPU
        ("f32", None, None, ("f32", "f32")),
        ("f16", "int8", None, ("f16", "f16")),  # quantized layers have their own matmuls
    ],
)
def test_f32_rows_resolve_for_unquantized_f16_models_only(
    dtype: str, quantization: str | None, asked: str | None, want: tuple[str, str]
) -> None:
    from irforge.artifacts.manifest import ExportOptions
    from irforge.facts.config import ModelConfig

    hf = ModelConfig.from_hf_config(tiny.llama_config().to_dict(), dtype=dtype)
    config = hf.replace(quantization=quantization)
    options = ExportOptions(f32_rows=True, activation_dtype=asked).resolve(config)
    assert (options.activation_dtype, options.kv_cache_dtype) == want
    assert ExportOptions().resolve(config).activation_dtype == (asked or dtype)
    assert "--f32-rows" in ExportOptions(f32_rows=True).cli_args()
    with pytest.raises(ConfigError, match="f32_rows"):
        ExportOptions(f32_rows="yes")  # type: ignore[arg-type]
