"""The built-in tiny model: a small seeded Llama with a real BPE tokenizer, made offline.

`irforge build tiny` starts from it, so the whole pipeline (and `make demo`) runs on any
machine in seconds without a download. Weights are random: it exercises the toolchain, it
does not write sensible text.
"""

from __future__ import annotations

import json
from pathlib import Path

from irforge.facts.presets import TINY_CONFIG as CONFIG
from irforge.formats.atomic import AtomicFile

SEED = 0
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
# A tiny Llama-3-style chat template: enough for /v1/chat/completions to render messages.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, this is irforge running a tiny llama on iree",
    "user: what is the capital of france? assistant: paris.",
    "prefill writes the prompt into the pages, then decode appends one token at a time",
]


def _write(path: Path, data: bytes) -> None:
    with AtomicFile(path) as f:
        f.write(data)


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A byte-level BPE (GPT-2/Llama-3 style) trained on a fixed corpus: deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()),  # its order varies
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    _write(folder / "tokenizer.json", tok.to_str().encode())
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "model_max_length": CONFIG["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }
    _write(folder / "tokenizer_config.json", json.dumps(config, indent=2).encode())


def create_tiny(folder: Path, *, seed: int = SEED) -> Path:
    """Write config.json, model.safetensors and the tokenizer of the tiny model to `folder`."""
    import torch
    from safetensors.torch import save

    from irforge.facts.config import ModelConfig
    from irforge.facts.tensor_kinds import hf_shapes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = ModelConfig.from_hf_config(CONFIG)
    shapes = hf_shapes(config)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        if len(shape) == 1:  # norms near 1, so activations keep their scale
            tensors[name] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:  # unit-variance outputs at every layer: attention is far from uniform
            tensors[name] = torch.randn(shape, generator=gen) / shape[1] ** 0.5
    _write(folder / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    _write(folder / "config.json", json.dumps(CONFIG, indent=2).encode())
    generation = {"bos_token_id": 1, "eos_token_id": 2}
    _write(folder / "generation_config.json", json.dumps(generation).encode())
    write_tokenizer(folder, config.vocab_size)
    return folder


if __name__ == "__main__":  # `python -m irforge.stages.tiny FOLDER`: build's first step, by hand
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m irforge.stages.tiny FOLDER")
    print(create_tiny(Path(sys.argv[1])))
