"""Session-scoped tiny models, made once per test run by the reference libraries."""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402

Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF folder: f32 tiny Llama with llama3 rope scaling, GQA, untied embeddings."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    tiny.save_hf(folder, tiny.llama_config())
    return folder


@pytest.fixture(scope="session")
def llama_bf16_sharded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model in bf16, saved in several safetensors shards with an index."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama-bf16"
    import torch

    tiny.save_hf(folder, tiny.llama_config(), dtype=torch.bfloat16, max_shard_size="60KB")
    return folder


@pytest.fixture(scope="session")
def mistral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "tiny-mistral"
    tiny.save_hf(folder, tiny.mistral_config())
    return folder


@pytest.fixture(scope="session")
def llama_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The tiny Llama as llama.cpp writes it: f16 matrices, f32 norms, one Q8_0 and one Q4_0."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    model = tiny.build_model(tiny.llama_config())
    quant = {"blk.0.ffn_up.weight": Q.Q8_0, "blk.1.ffn_gate.weight": Q.Q4_0}
    written = tiny.write_gguf(path, model, quant=quant, float_type=Q.F16)
    return path, written
