"""The seed models: the one table of the models irforge knows by name.

Each has its Hub repo, the ModelConfig of its published config.json (so it can be planned and
exported before anything is downloaded), the tensor-parallel sizes shark-ai supports for it, and
for some a GGUF repo. `irforge models`, `build ALIAS`, `download ALIAS`, `export --preset` and
the Makefile's pattern rule all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from irforge.errors import ConfigError
from irforge.facts.config import ModelConfig, RopeScaling

TINY_ALIAS = "tiny"


@dataclass(frozen=True)
class RegistryEntry:
    """A model irforge knows by name. `repo_id` is None for the built-in tiny model."""

    alias: str
    repo_id: str | None
    config: ModelConfig
    tp: tuple[int, ...]
    gguf_repo: str | None = None
    description: str = ""

    @property
    def preset(self) -> str:
        """Its name as an export preset (`irforge export --preset`)."""
        return self.alias


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

_TP_1_8 = (1, 2, 4, 8)
_BASE, _INSTRUCT = _LLAMA31_BASE_EOS, _LLAMA31_INSTRUCT_EOS


def _llama(
    alias: str,
    repo: str,
    shape: tuple[int, ...],
    eos: tuple[int, ...],
    tp: tuple[int, ...],
    what: str,
    gguf: str | None = None,
) -> RegistryEntry:
    hidden, layers, heads, ffn = shape
    return RegistryEntry(
        alias, repo, _llama31(repo, hidden, layers, heads, ffn, eos), tp, gguf, what
    )


def _nemo(alias: str, repo: str, what: str) -> RegistryEntry:
    return RegistryEntry(alias, repo, _mistral_nemo(repo), (1,), None, what)


# (hidden, layers, heads, ffn) of each Llama 3.1 size
_8B, _70B, _405B = (4096, 32, 32, 14336), (8192, 80, 64, 28672), (16384, 126, 128, 53248)

# As shark-ai's serving guide lists them (llama-serving-guide.md, "Supported Models").
ENTRIES: tuple[RegistryEntry, ...] = (
    _llama("llama-3.1-8b", "meta-llama/Llama-3.1-8B", _8B, _BASE, _TP_1_8, "Llama 3.1 8B base"),
    _llama(
        "llama-3.1-8b-instruct",
        "meta-llama/Llama-3.1-8B-Instruct",
        _8B,
        _INSTRUCT,
        _TP_1_8,
        "Llama 3.1 8B instruct",
        # The f16 GGUF sharktank's hf_datasets registry downloads for this model.
        gguf="SanctumAI/Meta-Llama-3.1-8B-Instruct-GGUF",
    ),
    _llama("llama-3.1-70b", "meta-llama/Llama-3.1-70B", _70B, _BASE, _TP_1_8, "Llama 3.1 70B base"),
    _llama(
        "llama-3.1-70b-instruct",
        "meta-llama/Llama-3.1-70B-Instruct",
        _70B,
        _INSTRUCT,
        _TP_1_8,
        "Llama 3.1 70B instruct",
    ),
    _llama(
        "llama-3.1-405b", "meta-llama/Llama-3.1-405B", _405B, _BASE, (8,), "Llama 3.1 405B base"
    ),
    _llama(
        "llama-3.1-405b-instruct",
        "meta-llama/Llama-3.1-405B-Instruct",
        _405B,
        _INSTRUCT,
        (8,),
        "Llama 3.1 405B instruct",
    ),
    _nemo("mistral-nemo-base-2407", "mistralai/Mistral-Nemo-Base-2407", "Mistral NeMo 12B base"),
    _nemo(
        "mistral-nemo-instruct-2407",
        "mistralai/Mistral-Nemo-Instruct-2407",
        "Mistral NeMo 12B instruct",
    ),
    RegistryEntry(
        TINY_ALIAS,
        None,
        ModelConfig.from_hf_config(TINY_CONFIG, source="irforge built-in tiny model"),
        (1, 2),
        None,
        "built-in tiny seeded Llama for tests and demos (`irforge build tiny` makes it)",
    ),
)

PRESETS: dict[str, ModelConfig] = {e.alias: e.config for e in ENTRIES}


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
