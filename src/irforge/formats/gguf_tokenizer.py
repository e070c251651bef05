"""A GGUF's own tokenizer as tokenizer.json and tokenizer_config.json, from tokenizer.ggml.*.

A GGUF carries its vocabulary (tokens, merges, token types, bos/eos, the chat template), so a
GGUF alone should go from file to chat server. This rebuilds the Hugging Face tokenizer the
GGUF was made from with the `tokenizers` library, for byte-level BPE vocabularies (`gpt2`
tokenizer model: Llama 3, GPT-2 and their kin), with the pre-tokenizer `tokenizer.ggml.pre`
names. Its split patterns and `ignore_merges` are those of the Hugging Face tokenizer.json
files llama.cpp's converter maps to each name. SentencePiece vocabularies (`llama` model:
Llama 2, Mistral) are not rebuilt yet.
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
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types


class UnsupportedTokenizer(ValueError):
    """The GGUF's tokenizer is of a kind this module does not rebuild."""


def tokenizer_from_gguf(meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(tokenizer.json text, tokenizer_config.json fields) of a GGUF's metadata.

    Raises:
        UnsupportedTokenizer: no vocabulary, a model other than byte-level BPE, or a
            pre-tokenizer not in PRE_TOKENIZERS.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise UnsupportedTokenizer("the GGUF has no tokenizer.ggml.tokens")
    if kind != "gpt2":
        raise UnsupportedTokenizer(f"tokenizer model {kind!r} (only byte-level BPE, 'gpt2')")
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
    types = meta.get("tokenizer.ggml.token_type") or []
    tok.add_special_tokens(
        [
            AddedToken(str(tokens[i]), special=True, normalized=False)
            for i, t in enumerate(types)
            if t == _CONTROL
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


def tokenizer_config_text(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def _token(token_id: object, tokens: list[Any]) -> int | None:
    """A metadata token id that names a token, else None (GGUF metadata is untrusted)."""
    if isinstance(token_id, bool) or not isinstance(token_id, int):
        return None
    return token_id if 0 <= token_id < len(tokens) else None
