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


# -- compiled tiny models, shared by the export/compile/run tests (slowest fixtures) -------

STRIDE = 16


def _build(folder: Path, source: Path, **export_kwargs: object) -> Path:
    from irforge.artifacts.manifest import ExportOptions
    from irforge.stages.compile import compile_folder
    from irforge.stages.convert import convert
    from irforge.stages.export import export

    archive = convert(source, out=folder / "src" / "model.irpa").out
    options = ExportOptions(block_seq_stride=STRIDE, **export_kwargs)
    export(archive, out_dir=folder / "art", options=options)
    compile_folder(folder / "art", target="cpu")
    return folder / "art"


@pytest.fixture(scope="session")
def llama_artifacts(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    """The tiny Llama exported with batch sizes 1 and 4 (verify too, k = 3) and compiled for
    the CPU."""
    return _build(
        tmp_path_factory.mktemp("llama-art"),
        llama_dir,
        prefill_batch_sizes=(1, 4),
        decode_batch_sizes=(1, 4),
        speculative_tokens=3,
    )


@pytest.fixture(scope="session")
def mistral_artifacts(tmp_path_factory: pytest.TempPathFactory, mistral_dir: Path) -> Path:
    return _build(
        tmp_path_factory.mktemp("mistral-art"),
        mistral_dir,
        prefill_batch_sizes=(4,),
        decode_batch_sizes=(4,),
    )


@pytest.fixture(scope="session")
def gguf_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama as an f32 GGUF (llama.cpp q/k permutation, rope_freqs), compiled."""
    folder = tmp_path_factory.mktemp("gguf-art")
    gguf_path = folder / "tiny-llama-f32.gguf"
    tiny.write_gguf(gguf_path, tiny.build_model(tiny.llama_config()))
    return _build(folder, gguf_path, prefill_batch_sizes=(1,), decode_batch_sizes=(1,))


@pytest.fixture(scope="session")
def llama_tp4_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose heads (8) and kv heads (4) divide by 2 and 4."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama-tp4"
    tiny.save_hf(folder, tiny.llama_config(num_attention_heads=8, num_key_value_heads=4))
    return folder


@pytest.fixture(scope="session")
def gguf_f16_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama as llama.cpp writes a half-precision GGUF (f16 matrices beside f32 norms,
    q/k permuted), converted with no --dtype and compiled: the default path of a real GGUF."""
    folder = tmp_path_factory.mktemp("gguf-f16-art")
    gguf_path = folder / "tiny-llama-f16.gguf"
    tiny.write_gguf(gguf_path, tiny.build_model(tiny.llama_config()), float_type=Q.F16)
    return _build(folder, gguf_path, prefill_batch_sizes=(1,), decode_batch_sizes=(1,))


@pytest.fixture(scope="session")
def gguf_f16_rows_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same f16 GGUF exported as a CPU-only build does (f32_rows: activations in f32, f16
    weights widened inside each matmul, the cache in f16), at 1 and 4 rows."""
    folder = tmp_path_factory.mktemp("gguf-f16-rows-art")
    gguf_path = folder / "tiny-llama-f16.gguf"
    tiny.write_gguf(gguf_path, tiny.build_model(tiny.llama_config()), float_type=Q.F16)
    return _build(
        folder, gguf_path, prefill_batch_sizes=(1, 4), decode_batch_sizes=(1, 4), f32_rows=True
    )
