"""End to end: save_pretrained or llama.cpp-style GGUF -> `irforge convert` -> PagedLlama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tiny
from irforge.model import ModelOptions, PagedLlama
from irforge.stages.convert import convert
from model_helpers import STRIDE, greedy, hf_logits, rel_err, tiny_llama, tiny_mistral

PROMPT = [17, 3, 250, 42, 9, 128, 77, 5, 200, 31, 64]
PAGES = [6, 2, 9, 4, 11, 1, 7]


def _source(kind: str, hf: torch.nn.Module, tmp_path: Path) -> Path:
    if kind == "gguf":
        path = tmp_path / "model.gguf"
        tiny.write_gguf(path, hf)  # f32, llama.cpp's q/k permutation and rope_freqs.weight
        return path
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("name", "kind"), [("llama", "hf"), ("mistral", "hf"), ("llama", "gguf")])
def test_converted_archive_matches_transformers(name: str, kind: str, tmp_path: Path) -> None:
    hf = tiny_mistral() if name == "mistral" else tiny_llama()
    archive = convert(_source(kind, hf, tmp_path), out=tmp_path / "model.irpa").out
    model = PagedLlama.from_archive(archive, options=ModelOptions(block_seq_stride=STRIDE))
    config = model.config
    assert config.dtype == "f32" and model.dtype == torch.float32
    if kind == "gguf":  # the path under test: interleaved rows, scaling as divisors
        assert config.rope_interleaved and config.rope_freq_factors is not None
    elif name == "llama":
        assert not config.rope_interleaved and config.rope_scaling is not None
    (seq,), (logits,) = greedy(model, model.allocate_cache(12), [PROMPT], [PAGES], steps=16)
    assert rel_err(logits, hf_logits(hf, seq)) < 1e-4
