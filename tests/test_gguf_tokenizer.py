"""A GGUF's tokenizer rebuilt from its tokenizer.ggml.* keys gives the ids and text of the
Hugging Face tokenizer the GGUF was made from.

The GGUFs are written the way llama.cpp's converter writes them: the token list by id with
control tokens typed, and the gguf package's SpecialVocab reading merges, bos/eos and the chat
template from the Hugging Face files. The references are those files, run by `tokenizers`.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from tokenizers import Regex, Tokenizer, pre_tokenizers

from irforge.formats.gguf import read_gguf
from irforge.formats.gguf_tokenizer import UnsupportedTokenizer, tokenizer_from_gguf
from irforge.tiny import CHAT_TEMPLATE, write_tokenizer

CORPUS = [
    "Hello, world! How are you?",
    "  leading spaces,\ttabs\tand\nnew\n\nlines  ",
    "digits 1 12 123 1234 12345 3.14159 -42 1e10",
    "naïve café – Ünïcödé «quotes» 日本語のテキスト 中文 한국어 Ελληνικά",
    "emoji 🦙🔥👩‍💻 and 🇫🇷 flags",
    "code: def f(x): return x**2  # comment\n    if x != y: pass",
    "<s>special</s> tokens in text",
    "it's we're they've I'm you'll he'd DON'T",
    "",
]
# Llama 3's tokenizer.json pre-tokenizer: a Split on this pattern, then bytes
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Mistral-Nemo's tokenizer.json (tekken): case-split letters, single digits, no contractions
TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLITS = {"llama-bpe": LLAMA3_SPLIT, "tekken": TEKKEN_SPLIT}


def _hf_folder(folder: Path, style: str) -> Path:
    """irforge's tiny byte-level BPE, splitting words as GPT-2, Llama 3 or tekken does."""
    write_tokenizer(folder, 288)
    if style in SPLITS:
        doc = json.loads((folder / "tokenizer.json").read_text())
        doc["model"]["ignore_merges"] = True
        tok = Tokenizer.from_str(json.dumps(doc))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLITS[style]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.save(str(folder / "tokenizer.json"))
    return folder


def _write_gguf(hf: Path, path: Path, pre: str) -> None:
    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a.content for a in tok.get_added_tokens_decoder().values() if a.special}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    gguf.SpecialVocab(hf, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("pre", ["gpt2", "llama-bpe", "tekken"])
def test_rebuilt_tokenizer_gives_the_same_ids_and_text(tmp_path: Path, pre: str) -> None:
    hf = _hf_folder(tmp_path / "hf", pre)
    _write_gguf(hf, tmp_path / "m.gguf", pre)
    text, config = tokenizer_from_gguf(read_gguf(tmp_path / "m.gguf").metadata)
    ours, theirs = Tokenizer.from_str(text), Tokenizer.from_file(str(hf / "tokenizer.json"))
    for line in CORPUS:
        want = theirs.encode(line, add_special_tokens=False).ids
        assert ours.encode(line, add_special_tokens=False).ids == want, line
        assert ours.decode(want, skip_special_tokens=False) == theirs.decode(
            want, skip_special_tokens=False
        )
    hf_config = json.loads((hf / "tokenizer_config.json").read_text())
    assert config["bos_token"] == hf_config["bos_token"]
    assert config["eos_token"] == hf_config["eos_token"]
    assert config["chat_template"] == CHAT_TEMPLATE


def test_the_patterns_differ_where_they_split_digits_and_case(tmp_path: Path) -> None:
    """The pre-tokenizers are told apart (one split would pass another's corpus only by
    luck): 12345 is one word for GPT-2, 123|45 for Llama 3, five for tekken."""
    split = {
        style: Tokenizer.from_file(
            str(_hf_folder(tmp_path / style, style) / "tokenizer.json")
        ).pre_tokenizer.pre_tokenize_str
        for style in ("gpt2", "llama-bpe", "tekken")
    }
    assert [len(split[s]("12345")) for s in ("gpt2", "llama-bpe", "tekken")] == [1, 2, 5]
    assert len(split["tekken"]("HelloWorld")) == 2 and len(split["gpt2"]("HelloWorld")) == 1


def test_convert_of_a_gguf_writes_its_tokenizer(tmp_path: Path, llama_gguf) -> None:
    """`convert` of a GGUF with no tokenizer files beside it writes both, from its keys."""
    from irforge.convert import convert

    source, _ = llama_gguf
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "m.gguf").symlink_to(source)
    out = convert(alone / "m.gguf", out=tmp_path / "out" / "model.irpa")
    names = sorted(p.name for p in out.tokenizer_files)
    assert names == ["tokenizer.json", "tokenizer_config.json"]
    assert Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json")).get_vocab_size() > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokenizer.ggml.model": "llama"}, "'llama'"),
        ({"tokenizer.ggml.pre": "qwen2"}, "'qwen2'"),
        ({"tokenizer.ggml.tokens": []}, "no tokenizer.ggml.tokens"),
        ({"tokenizer.ggml.merges": ["ab"]}, "not two tokens"),
    ],
)
def test_what_cannot_be_rebuilt_is_said(change: dict, message: str) -> None:
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"]}
    with pytest.raises(UnsupportedTokenizer, match=message):
        tokenizer_from_gguf({**meta, **change})
