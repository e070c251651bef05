"""A GGUF's own tokenizer as tokenizer.json and tokenizer_config.json, from tokenizer.ggml.*.

A GGUF carries its vocabulary (tokens, merges, token types, bos/eos, the chat template), so a
GGUF alone should go from file to chat server. This rebuilds the Hugging Face tokenizer the
GGUF was made from with the `tokenizers` library, for two kinds of vocabulary:

- byte-level BPE (`gpt2` tokenizer model: Llama 3, GPT-2 and their kin), with the
  pre-tokenizer `tokenizer.ggml.pre` names. Its split patterns and `ignore_merges` are those
  of the Hugging Face tokenizer.json files llama.cpp's converter maps to each name.
- SentencePiece BPE (`llama` model: Llama 2, Mistral 7B, TinyLlama): pieces with `▁` for
  a space and `<0xNN>` byte pieces. The GGUF has scores, not merges; as transformers builds a
  tokenizer.json from a tokenizer.model, every split of a piece into two pieces is a merge,
  ranked by the piece's score (llama.cpp's own tokenizer merges by the same scores).
"""

from __future__ import annotations

import json
from typing import Any

# GPT-2's pre-tokenizer split (tokenizers' ByteLevel with use_regex)
_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Llama 3's tokenizer.json Split pattern (digits in runs of at most three)
_LLAMA3_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Mistral's tekken (Mistral-Nemo): case-split letter runs, one digit at a time, no
# contractions; the pattern of its tokenizer.json, as llama.cpp's vocabulary code quotes it
_TEKKEN_SPLIT = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"""
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"""
    r"""\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# tokenizer.ggml.pre -> (split pattern, ignore_merges: a whole word in the vocabulary is kept)
PRE_TOKENIZERS = {
    "default": (_GPT2_SPLIT, False),
    "gpt2": (_GPT2_SPLIT, False),
    "llama-bpe": (_LLAMA3_SPLIT, True),
    "llama3": (_LLAMA3_SPLIT, True),
    "tekken": (_TEKKEN_SPLIT, True),
}
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
    split, ignore_merges = PRE_TOKENIZERS[pre]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    if any(len(m) != 2 for m in merges):
        raise UnsupportedTokenizer("a tokenizer.ggml.merges entry is not two tokens")
    vocab = {str(t): i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(meta: dict[str, Any], tokens: list[Any], types: list[Any]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

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
    # "first" would tokenize "<s>[INST]" unlike the model was trained)
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="always" if prefix else "never", split=False
    )
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
