"""A GGUF's own tokenizer as tokenizer.json and tokenizer_config.json, from tokenizer.ggml.*.

A GGUF carries its vocabulary (tokens, merges, token types, bos/eos, the chat template), so a
GGUF alone should go from file to chat server. This rebuilds the Hugging Face tokenizer the
GGUF was made from with the `tokenizers` library, for two kinds of vocabulary:

- byte-level BPE (`gpt2` tokenizer model: Llama 3, GPT-2, SmolLM, DeepSeek and their kin),
  with the pre-tokenizer `tokenizer.ggml.pre` names (pretokenizers.py: the split patterns
  and `ignore_merges` llama.cpp uses for each name).
- SentencePiece BPE (`llama` model: Llama 2, Mistral 7B, TinyLlama): pieces with `▁` for
  a space and `<0xNN>` byte pieces. The GGUF has scores, not merges; as transformers builds a
  tokenizer.json from a tokenizer.model, every split of a piece into two pieces is a merge,
  ranked by the piece's score (llama.cpp's own tokenizer merges by the same scores).
"""

from __future__ import annotations

import json
from typing import Any

from irforge.formats.pretokenizers import PRE_TOKENIZERS

_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4  # llama.cpp's token types


class UnsupportedTokenizer(ValueError):
    """The GGUF's tokenizer is of a kind this module does not rebuild."""


def tokenizer_from_gguf(meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(tokenizer.json text, tokenizer_config.json fields) of a GGUF's metadata.

    Raises:
        UnsupportedTokenizer: no vocabulary, a model other than byte-level or SentencePiece
            BPE, a pre-tokenizer not in PRE_TOKENIZERS, or malformed merges or scores.
    """
    from tokenizers import AddedToken, processors

    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise UnsupportedTokenizer("the GGUF has no tokenizer.ggml.tokens")
    types = meta.get("tokenizer.ggml.token_type") or []
    if kind == "gpt2":
        tok = _byte_level(meta, tokens)
    elif kind == "llama":
        tok = _sentencepiece(meta, tokens, types)
    else:
        raise UnsupportedTokenizer(
            f"tokenizer model {kind!r} (only byte-level BPE, 'gpt2', and SentencePiece, 'llama')"
        )
    tok.add_special_tokens(
        [
            AddedToken(str(tokens[i]), special=True, normalized=False)
            for i, t in enumerate(types)
            if t in (_UNKNOWN, _CONTROL)
        ]
    )
    tok.add_tokens(
        [
            AddedToken(str(tokens[i]), special=False, normalized=False)
            for i, t in enumerate(types)
            if t == _USER_DEFINED
        ]
    )
    bos = _token(meta.get("tokenizer.ggml.bos_token_id"), tokens)
    eos = _token(meta.get("tokenizer.ggml.eos_token_id"), tokens)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    if add_bos and bos is not None:
        name = str(tokens[bos])
        tok.post_processor = processors.TemplateProcessing(
            single=f"{name}:0 $A:0",
            pair=f"{name}:0 $A:0 {name}:1 $B:1",
            special_tokens=[(name, int(bos))],
        )
    config: dict[str, Any] = {"add_bos_token": add_bos}
    if bos is not None:
        config["bos_token"] = str(tokens[bos])
    if eos is not None:
        config["eos_token"] = str(tokens[eos])
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        config["chat_template"] = template
    return tok.to_str(), config


def _byte_level(meta: dict[str, Any], tokens: list[Any]) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = meta.get("tokenizer.ggml.pre") or "default"
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedTokenizer(f"pre-tokenizer {pre!r} (known: {', '.join(PRE_TOKENIZERS)})")
    splits, ignore_merges = PRE_TOKENIZERS[pre]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    if any(len(m) != 2 for m in merges):
        raise UnsupportedTokenizer("a tokenizer.ggml.merges entry is not two tokens")
    vocab = {str(t): i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            *(pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in splits),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(meta: dict[str, Any], tokens: list[Any], types: list[Any]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {str(t): i for i, t in enumerate(tokens)}
    scores = meta.get("tokenizer.ggml.scores") or []
    if len(scores) not in (0, len(tokens)):
        raise UnsupportedTokenizer("tokenizer.ggml.scores and .tokens differ in length")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in scores):
        raise UnsupportedTokenizer("a tokenizer.ggml.scores entry is not a number")
    ranked = []
    for piece, i in vocab.items():
        for cut in range(1, len(piece)):  # shorter left parts first, as transformers ranks them
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-float(scores[i]) if scores else 0.0, i, cut, (left, right)))
    merges = [m for *_, m in sorted(ranked)]
    unknown = next((str(tokens[i]) for i, t in enumerate(types) if t == _UNKNOWN), None)
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unknown, fuse_unk=True, byte_fallback=True)
    )
    # llama.cpp's key: SentencePiece's dummy prefix, a space before each run of text, after
    # special tokens too (llama.cpp, Llama 2's own tokenizer.json and Meta's encoder do so;
    # "first" would tokenize "<s>[INST]" unlike the model was trained). As normalizers, as
    # Llama 2's tokenizer.json has them: tokenizers' Metaspace prepends nothing to a text
    # that already starts with a space, so " " became "▁" where llama.cpp gives "▁▁".
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    steps_in = [normalizers.Prepend("\u2581")] if prefix else []
    tok.normalizer = normalizers.Sequence([*steps_in, normalizers.Replace(" ", "\u2581")])
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    return tok


def tokenizer_config_text(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def _token(token_id: object, tokens: list[Any]) -> int | None:
    """A metadata token id that names a token, else None (GGUF metadata is untrusted)."""
    if isinstance(token_id, bool) or not isinstance(token_id, int):
        return None
    return token_id if 0 <= token_id < len(tokens) else None
