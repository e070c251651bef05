"""Tiny seeded models written by the reference libraries: transformers for HF folders, gguf's
GGUFWriter for GGUF files (with llama.cpp's q/k permutation and rope_freqs), tokenizers for
tokenizer.json. Tests compare irforge against what these produce."""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers

from irforge.stages.tiny import write_tokenizer

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # Small, so that the scaling changes some of the tiny model's frequencies.
    "original_max_position_embeddings": 32,
}


def llama_config(**overrides: object) -> transformers.LlamaConfig:
    kwargs = dict(
        vocab_size=288,  # irforge.stages.tiny's tokenizer: 256 bytes, 3 specials, 29 merges
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling=dict(LLAMA3_SCALING),
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    return transformers.LlamaConfig(**kwargs)


def mistral_config(**overrides: object) -> transformers.MistralConfig:
    kwargs = dict(
        vocab_size=288,  # irforge.stages.tiny's tokenizer: 256 bytes, 3 specials, 29 merges
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # not hidden/heads, like Mistral-Nemo
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=1e6,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    return transformers.MistralConfig(**kwargs)


def build_model(config: transformers.PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = (
        transformers.MistralForCausalLM
        if config.model_type == "mistral"
        else transformers.LlamaForCausalLM
    )
    model = cls(config).eval()
    # Default init leaves norms at 1; random norms make a mix-up of norm tensors visible.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def save_hf(
    folder: Path,
    config: transformers.PretrainedConfig,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
) -> torch.nn.Module:
    """save_pretrained a seeded model (safetensors) plus tokenizer files; returns the model."""
    model = build_model(config, seed).to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    write_tokenizer(folder, config.vocab_size)  # irforge's own, trained on a fixed corpus
    return model


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf q/k row permutation (half-split -> interleaved rope)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def llamacpp_rope_freqs(config: transformers.PretrainedConfig) -> np.ndarray:
    """The rope_freqs.weight llama.cpp writes for llama3 scaling (per-frequency divisors)."""
    scaling = config.rope_parameters if hasattr(config, "rope_parameters") else config.rope_scaling
    head_dim = config.hidden_size // config.num_attention_heads
    theta = scaling.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
HF_LAYER_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str:
    """Written independently of irforge's table, so a test can catch a mistake in it."""
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    parts = hf_name.split(".")  # model.layers.{i}.<module...>.weight
    return f"blk.{parts[2]}.{HF_LAYER_TO_GGUF['.'.join(parts[3:-1])]}.weight"


def write_gguf(
    path: Path,
    model: torch.nn.Module,
    *,
    quant: dict[str, gguf.GGMLQuantizationType] | None = None,
    float_type: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    rope_freqs: bool = True,
    spm_vocab: bool = False,
) -> dict[str, np.ndarray]:
    """Write an HF Llama as llama.cpp would; returns the float32 arrays written, by name.

    The vocabulary is placeholder tokens `t{i}` as a byte-level list, which irforge reads;
    `spm_vocab` writes a sentencepiece-style list instead (<unk>, <s>, </s>, 256 byte tokens,
    then placeholders), which llama.cpp itself can load: it refuses a byte-level vocabulary
    without merges."""
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(cfg.hidden_size // heads)
    w.add_vocab_size(cfg.vocab_size)
    if spm_vocab:
        specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        tokens = specials + [f"\u2581t{i}" for i in range(cfg.vocab_size - len(specials))]
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * len(tokens))
        w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (len(tokens) - len(specials)))
    else:
        w.add_bos_token_id(cfg.bos_token_id)
        w.add_eos_token_id(cfg.eos_token_id)
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    written: dict[str, np.ndarray] = {}
    for hf_name, t in model.state_dict().items():
        name = gguf_name(hf_name)
        arr = t.float().numpy()
        if name.endswith("attn_q.weight"):
            arr = llamacpp_permute(arr, heads)
        elif name.endswith("attn_k.weight"):
            arr = llamacpp_permute(arr, kv_heads)
        written[name] = arr
        qtype = (quant or {}).get(
            name, float_type if arr.ndim > 1 else gguf.GGMLQuantizationType.F32
        )
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, arr)
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, arr.astype(np.float16))
        elif qtype in _K_SCALE_FIELDS:  # no Python quantizer: random blocks stand in
            raw = random_quant_bytes(qtype, *arr.shape)
            w.add_tensor(name, raw, raw_dtype=qtype)
            written[name] = gguf.quants.dequantize(raw, qtype)
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    if rope_freqs:
        freqs = llamacpp_rope_freqs(cfg)
        w.add_tensor("rope_freqs.weight", freqs)
        written["rope_freqs.weight"] = freqs
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


# Where the float16 scale fields sit in each K-quant block (gguf's Python package has
# dequantizers but no quantizers for these, so tests fill blocks with random bytes).
_K_SCALE_FIELDS = {
    gguf.GGMLQuantizationType.Q4_K: (0, 2),  # d, dmin
    gguf.GGMLQuantizationType.Q6_K: (208,),  # d
}


def random_quant_bytes(
    qtype: gguf.GGMLQuantizationType, rows: int, cols: int, seed: int = 0
) -> np.ndarray:
    """Random blocks of a K-quant type with finite, small scales: `[rows, row_bytes]` uint8."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows * cols // block, type_size), dtype=np.uint8)
    for off in _K_SCALE_FIELDS[qtype]:
        scales = rng.uniform(0.001, 0.01, size=raw.shape[0]).astype(np.float16)
        raw[:, off : off + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, cols // block * type_size)
