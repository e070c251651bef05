"""ModelConfig presets for the seed models, with the hyperparameters of their published configs."""

from __future__ import annotations

from irforge.errors import ConfigError
from irforge.facts.config import ModelConfig, RopeScaling

# Llama-3.1's `llama3` rope scaling, identical for every size.
_LLAMA31_ROPE = RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context_length=8192
)
_LLAMA31_BASE_EOS = (128001,)  # <|end_of_text|>
_LLAMA31_INSTRUCT_EOS = (128001, 128008, 128009)  # + <|eom_id|>, <|eot_id|>


def _llama31(
    repo: str, hidden: int, layers: int, heads: int, ffn: int, eos: tuple[int, ...]
) -> ModelConfig:
    return ModelConfig(
        vocab_size=128256,
        context_length=131072,
        embedding_length=hidden,
        block_count=layers,
        feed_forward_length=ffn,
        attention_head_count=heads,
        attention_head_count_kv=8,
        head_dim=128,
        rms_norm_eps=1e-5,
        rope_freq_base=500000.0,
        rope_scaling=_LLAMA31_ROPE,
        bos_token_id=128000,
        eos_token_ids=eos,
        dtype="bf16",
        source=f"hf:{repo}",
    )


def _mistral_nemo(repo: str) -> ModelConfig:
    return ModelConfig(
        vocab_size=131072,
        # config.json says max_position_embeddings=1024000, but Mistral documents a 128k
        # context window for Nemo; we use the documented 131072.
        context_length=131072,
        embedding_length=5120,
        block_count=40,
        feed_forward_length=14336,
        attention_head_count=32,
        attention_head_count_kv=8,
        head_dim=128,  # not 5120 / 32 = 160
        rms_norm_eps=1e-5,
        rope_freq_base=1000000.0,
        bos_token_id=1,
        eos_token_ids=(2,),
        dtype="bf16",
        source=f"hf:{repo}",
    )


# The built-in tiny model's config.json (irforge/stages/tiny.py writes its weights and tokenizer).
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 288,  # 256 bytes, 3 special tokens, 29 merges
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}

PRESETS: dict[str, ModelConfig] = {
    "llama-3.1-8b": _llama31("meta-llama/Llama-3.1-8B", 4096, 32, 32, 14336, _LLAMA31_BASE_EOS),
    "llama-3.1-8b-instruct": _llama31(
        "meta-llama/Llama-3.1-8B-Instruct", 4096, 32, 32, 14336, _LLAMA31_INSTRUCT_EOS
    ),
    "llama-3.1-70b": _llama31("meta-llama/Llama-3.1-70B", 8192, 80, 64, 28672, _LLAMA31_BASE_EOS),
    "llama-3.1-70b-instruct": _llama31(
        "meta-llama/Llama-3.1-70B-Instruct", 8192, 80, 64, 28672, _LLAMA31_INSTRUCT_EOS
    ),
    "llama-3.1-405b": _llama31(
        "meta-llama/Llama-3.1-405B", 16384, 126, 128, 53248, _LLAMA31_BASE_EOS
    ),
    "llama-3.1-405b-instruct": _llama31(
        "meta-llama/Llama-3.1-405B-Instruct", 16384, 126, 128, 53248, _LLAMA31_INSTRUCT_EOS
    ),
    "mistral-nemo-base-2407": _mistral_nemo("mistralai/Mistral-Nemo-Base-2407"),
    "mistral-nemo-instruct-2407": _mistral_nemo("mistralai/Mistral-Nemo-Instruct-2407"),
    # The built-in model of `irforge build tiny` (irforge/stages/tiny.py writes its weights).
    "tiny": ModelConfig.from_hf_config(TINY_CONFIG, source="irforge built-in tiny model"),
}


def get_preset(name: str) -> ModelConfig:
    """The preset called `name`.

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}"
        ) from None
