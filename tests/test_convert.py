"""convert(): every output tensor against its source, as read by the reference libraries."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors
import torch
import transformers

import tiny
from irforge.artifacts.archive import open_archive
from irforge.facts.config import METADATA_KEY
from irforge.formats.tensor_ref import read_bytes, read_tensor
from irforge.stages import tensor_plan as convert_module
from irforge.stages.convert import convert

Q = gguf.GGMLQuantizationType


def hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safetensors.safe_open(f, framework="pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})  # noqa: SIM118
    return out


def assert_hparams_equal(cfg, hf: transformers.PretrainedConfig) -> None:
    assert cfg.vocab_size == hf.vocab_size
    assert cfg.embedding_length == hf.hidden_size
    assert cfg.block_count == hf.num_hidden_layers
    assert cfg.feed_forward_length == hf.intermediate_size
    assert cfg.attention_head_count == hf.num_attention_heads
    assert cfg.attention_head_count_kv == hf.num_key_value_heads
    assert cfg.head_dim == hf.head_dim
    assert cfg.rms_norm_eps == hf.rms_norm_eps
    assert cfg.context_length == hf.max_position_embeddings
    assert cfg.rope_freq_base == hf.rope_parameters["rope_theta"]
    assert cfg.tie_word_embeddings == hf.tie_word_embeddings
    assert cfg.bos_token_id == hf.bos_token_id
    assert cfg.eos_token_ids == (hf.eos_token_id,)


def test_hf_folder_passthrough_is_byte_identical(llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.irpa"
    result = convert(llama_dir, out=out)
    archive = open_archive(out)
    source = hf_tensors(llama_dir)
    assert result.copied == len(source) and result.converted == result.dequantized == 0
    assert set(archive.tensors) == {tiny.gguf_name(n) for n in source}
    for hf_name, t in source.items():
        ref = archive.tensors[tiny.gguf_name(hf_name)]
        assert bytes(read_bytes(ref)) == t.contiguous().view(torch.uint8).numpy().tobytes()
        assert ref.shape == tuple(t.shape) and ref.dtype == "f32"
    hf = transformers.AutoConfig.from_pretrained(llama_dir)
    cfg = archive.require_config()
    assert_hparams_equal(cfg, hf)
    scaling = hf.rope_parameters
    assert cfg.rope_scaling.factor == scaling["factor"]
    assert cfg.rope_scaling.low_freq_factor == scaling["low_freq_factor"]
    assert cfg.rope_scaling.high_freq_factor == scaling["high_freq_factor"]
    assert cfg.rope_scaling.original_context_length == scaling["original_max_position_embeddings"]
    assert cfg.rope_interleaved is False and cfg.dtype == "f32"
    assert sorted(p.name for p in result.tokenizer_files) == [
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert (tmp_path / "tokenizer.json").read_bytes() == (llama_dir / "tokenizer.json").read_bytes()


def test_mistral_head_dim_recorded(mistral_dir: Path, tmp_path: Path) -> None:
    archive = open_archive(convert(mistral_dir, out=tmp_path / "m.irpa").out)
    hf = transformers.AutoConfig.from_pretrained(mistral_dir)
    cfg = archive.require_config()
    assert_hparams_equal(cfg, hf)
    assert cfg.head_dim == 32 != cfg.embedding_length // cfg.attention_head_count
    assert archive.tensors["blk.0.attn_q.weight"].shape == (4 * 32, 64)


def test_sharded_bf16_passthrough_and_casts(llama_bf16_sharded_dir: Path, tmp_path: Path) -> None:
    source = hf_tensors(llama_bf16_sharded_dir)
    index = llama_bf16_sharded_dir / "model.safetensors.index.json"
    for how, dtype, torch_dtype in (("dir", None, torch.bfloat16), ("index", "f32", torch.float32)):
        src = llama_bf16_sharded_dir if how == "dir" else index
        archive = open_archive(convert(src, out=tmp_path / f"{how}.irpa", dtype=dtype).out)
        assert archive.require_config().dtype == (dtype or "bf16")
        for hf_name, t in source.items():
            got = read_tensor(archive.tensors[tiny.gguf_name(hf_name)])
            assert got.dtype == torch_dtype
            torch.testing.assert_close(got, t.to(torch_dtype), rtol=0, atol=0)


def test_cast_in_small_chunks_matches_torch(
    llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(convert_module, "CHUNK_ELEMENTS", 1000)  # not a multiple of any row
    archive = open_archive(convert(llama_dir, out=tmp_path / "h.irpa", dtype="bf16").out)
    for hf_name, t in hf_tensors(llama_dir).items():
        got = read_tensor(archive.tensors[tiny.gguf_name(hf_name)])
        torch.testing.assert_close(got, t.to(torch.bfloat16), rtol=0, atol=0)


def test_gguf_passthrough_dequant_and_rope_freqs(
    llama_gguf: tuple[Path, dict], tmp_path: Path
) -> None:
    path, written = llama_gguf
    result = convert(path, out=tmp_path / "g.irpa")
    archive = open_archive(result.out)
    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    assert result.dequantized == 2 and "rope_freqs.weight" not in archive.tensors
    for name, ref in archive.tensors.items():
        src = by_name[name]
        assert ref.dtype == "f16"  # the f32 norms too: the archive's one float dtype
        if src.tensor_type == Q.F16:
            assert bytes(read_bytes(ref)) == src.data.tobytes()
        elif src.tensor_type == Q.F32:
            np.testing.assert_array_equal(read_tensor(ref).numpy(), src.data.astype(np.float16))
        else:  # dequantized by gguf's own code, then stored as f16
            want = gguf.quants.dequantize(src.data, src.tensor_type).astype(np.float16)
            assert ref.dtype == "f16"
            np.testing.assert_array_equal(read_tensor(ref).numpy(), want)
            np.testing.assert_allclose(read_tensor(ref).float().numpy(), written[name], atol=0.05)
    cfg = archive.require_config()
    assert cfg.rope_interleaved is True and cfg.rope_scaling is None
    np.testing.assert_array_equal(np.array(cfg.rope_freq_factors), written["rope_freqs.weight"])
    model_cfg = tiny.llama_config()
    assert cfg.vocab_size == model_cfg.vocab_size and cfg.rms_norm_eps == model_cfg.rms_norm_eps
    assert cfg.attention_head_count_kv == model_cfg.num_key_value_heads
    assert cfg.dtype == "f16" and cfg.tie_word_embeddings is False


def test_k_quants_dequantize_in_row_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # K-quant blocks span 256 columns, so this model is wider than the session one.
    model = tiny.build_model(tiny.llama_config(hidden_size=256, intermediate_size=256))
    path = tmp_path / "k.gguf"
    quant = {"blk.0.ffn_gate.weight": Q.Q4_K, "blk.1.attn_output.weight": Q.Q6_K}
    written = tiny.write_gguf(path, model, quant=quant)
    monkeypatch.setattr(convert_module, "CHUNK_ELEMENTS", 5 * 256)  # 5 rows at a time
    archive = open_archive(convert(path, out=tmp_path / "k.irpa", dtype="f32").out)
    for name in quant:
        got = read_tensor(archive.tensors[name]).numpy()
        assert got.shape == (256, 256) and np.isfinite(got).all()
        np.testing.assert_array_equal(got, written[name])


def test_lone_safetensors_file_with_and_without_config(llama_dir: Path, tmp_path: Path) -> None:
    lone = tmp_path / "src" / "weights.safetensors"
    lone.parent.mkdir()
    shutil.copy(llama_dir / "model.safetensors", lone)
    plain = convert(lone, out=tmp_path / "plain.irpa")
    assert plain.config is None and any("--config" in n for n in plain.notes)
    assert "blk.0.attn_q.weight" in open_archive(plain.out).tensors
    with_cfg = convert(lone, out=tmp_path / "cfg.irpa", config=llama_dir / "config.json")
    assert open_archive(with_cfg.out).require_config().block_count == 2
    # a config.json beside the lone file is picked up
    shutil.copy(llama_dir / "config.json", lone.parent / "config.json")
    beside = convert(lone, out=tmp_path / "beside.irpa")
    assert open_archive(beside.out).require_config().block_count == 2
    # the one thing left to say: no tokenizer came with it (text prompts need one)
    assert beside.notes == [
        "no tokenizer.json beside the source: put a tokenizer.json beside beside.irpa for text "
        "prompts and chat"
    ]


def test_unknown_tensor_names_are_kept_with_a_note(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "odd.safetensors"
    save_file({"encoder.thing": torch.ones(3)}, path)
    result = convert(path, out=tmp_path / "odd.irpa")
    assert any("encoder.thing" in n for n in result.notes)
    assert "encoder.thing" in open_archive(result.out).tensors


def test_tied_embeddings_have_no_output_tensor(tmp_path: Path) -> None:
    folder = tmp_path / "tied"
    tiny.save_hf(folder, tiny.llama_config(tie_word_embeddings=True))
    archive = open_archive(convert(folder, out=tmp_path / "t.irpa").out)
    assert archive.require_config().tie_word_embeddings
    assert "output.weight" not in archive.tensors


@pytest.mark.iree
def test_output_loads_in_iree_and_dump_parameters(llama_dir: Path, tmp_path: Path) -> None:
    import iree.runtime as rt

    out = convert(llama_dir, out=tmp_path / "m.irpa").out
    index = rt.ParameterIndex()
    index.load(str(out))
    keys = {k for k, _ in index.items()}
    assert "blk.1.ffn_down.weight" in keys and METADATA_KEY in keys
    tool = Path(sys.executable).parent / "iree-dump-parameters"
    dumped = subprocess.run(
        [str(tool), f"--parameters=model={out}"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "output.weight"):
        assert f"`{name}`" in dumped


def test_output_folder_is_created(llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "m.irpa"
    assert convert(llama_dir, out=out).out.is_file()
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []
